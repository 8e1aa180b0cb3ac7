//! A restricted pickle reader and writer for PyTorch state dicts.
//!
//! Nothing in a file is ever executed: the reader is a stack machine that knows only the opcodes
//! `torch.save` emits for a dict of tensors and plain config values, and only the callables
//! that rebuild tensors and ordered dicts. Anything else is refused with its offset.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

/// A storage reference as `torch.save` persists it: ('storage', type, key, location, numel).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    pub dtype: StorageType,
    pub key: String,
    pub numel: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F32,
    F64,
    F16,
    BF16,
}

impl StorageType {
    fn from_global(name: &str) -> Option<Self> {
        Some(match name {
            "torch.FloatStorage" => StorageType::F32,
            "torch.DoubleStorage" => StorageType::F64,
            "torch.HalfStorage" => StorageType::F16,
            "torch.BFloat16Storage" => StorageType::BF16,
            _ => return None,
        })
    }

    pub fn global(self) -> &'static str {
        match self {
            StorageType::F32 => "torch\nFloatStorage",
            StorageType::F64 => "torch\nDoubleStorage",
            StorageType::F16 => "torch\nHalfStorage",
            StorageType::BF16 => "torch\nBFloat16Storage",
        }
    }

    pub fn size(self) -> usize {
        match self {
            StorageType::F32 => 4,
            StorageType::F64 => 8,
            StorageType::F16 | StorageType::BF16 => 2,
        }
    }
}

/// A tensor view into a storage.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered, as Python dicts are.
    Dict(Vec<(Value, Value)>),
    Tensor(TensorRef),
    /// Intermediate values only.
    Global(String),
    Storage(StorageRef),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Tensor(_) => "tensor",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
        }
    }
}

const ALLOWED_GLOBALS: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch.FloatStorage",
    "torch.DoubleStorage",
    "torch.HalfStorage",
    "torch.BFloat16Storage",
];

enum Item {
    Mark,
    V(Value),
}

/// Containers nest at most this deep (a state dict needs 4): deeper values could overflow the
/// stack when dropped.
const MAX_DEPTH: usize = 32;

/// Nodes and nesting depth of a value, counted without recursion; stops once past `limit` nodes.
fn measure(v: &Value, limit: usize) -> (usize, usize) {
    let (mut nodes, mut depth) = (0, 0);
    let mut todo = vec![(v, 1usize)];
    while let Some((v, d)) = todo.pop() {
        nodes += 1;
        depth = depth.max(d);
        if nodes > limit {
            break;
        }
        match v {
            Value::Tuple(items) | Value::List(items) => {
                todo.extend(items.iter().map(|i| (i, d + 1)))
            }
            Value::Dict(items) => {
                todo.extend(items.iter().flat_map(|(k, v)| [(k, d + 1), (v, d + 1)]))
            }
            _ => {}
        }
    }
    (nodes, depth)
}

struct Machine<'a> {
    b: &'a [u8],
    at: usize,
    stack: Vec<Item>,
    memo: HashMap<u32, Value>,
    /// Value nodes the memo may still copy: a few bytes of MEMOIZE/GET opcodes could otherwise
    /// duplicate a value exponentially (a "billion laughs").
    budget: usize,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.b.get(self.at..end))
            .context("pickle ends early (truncated file?)")?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.b[self.at..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .context("unterminated GLOBAL name")?;
        let s = String::from_utf8(rest[..n].to_vec()).context("GLOBAL name is not UTF-8")?;
        self.at += n + 1;
        Ok(s)
    }
    fn utf8(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Str(
            String::from_utf8(self.take(n)?.to_vec()).context("string is not UTF-8")?,
        ))
    }
    fn push(&mut self, v: Value) {
        self.stack.push(Item::V(v));
    }
    /// Pays for copying a value of `nodes` nodes out of the budget.
    fn charge(&mut self, nodes: usize) -> Result<()> {
        self.budget = self.budget.checked_sub(nodes).context(
            "the pickle copies values beyond any state dict's size (a decompression bomb?)",
        )?;
        Ok(())
    }
    /// Fails when putting `v` into a container would nest deeper than `MAX_DEPTH`.
    fn nest(&self, v: &Value) -> Result<()> {
        if measure(v, usize::MAX).1 >= MAX_DEPTH {
            bail!("the pickle nests containers more than {MAX_DEPTH} deep");
        }
        Ok(())
    }
    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Item::V(v)) => Ok(v),
            Some(Item::Mark) => bail!("unexpected MARK on the pickle stack"),
            None => bail!("pickle stack underflow"),
        }
    }
    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Item::V(v)) => Ok(v),
            _ => bail!("pickle stack underflow"),
        }
    }
    /// The items above the last MARK, each checked to fit in a container.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::V(v)) => {
                    self.nest(&v)?;
                    out.push(v)
                }
                None => bail!("pickle MARK missing"),
            }
        }
        out.reverse();
        Ok(out)
    }
    /// Pops one item that goes into a container.
    fn pop_nested(&mut self) -> Result<Value> {
        let v = self.pop()?;
        self.nest(&v)?;
        Ok(v)
    }
    fn global(&mut self, name: String) -> Result<()> {
        if !ALLOWED_GLOBALS.contains(&name.as_str()) {
            bail!("forbidden global {name} in pickle: only tensors and plain values are loaded, nothing is executed");
        }
        self.push(Value::Global(name));
        Ok(())
    }
}

fn as_usize(v: &Value) -> Result<usize> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as usize),
        other => bail!("expected a non-negative int, got {}", other.type_name()),
    }
}

fn usizes(v: &Value) -> Result<Vec<usize>> {
    match v {
        Value::Tuple(t) | Value::List(t) => t.iter().map(as_usize).collect(),
        other => bail!("expected a tuple of ints, got {}", other.type_name()),
    }
}

fn reduce(func: Value, args: Value) -> Result<Value> {
    let Value::Global(name) = func else {
        bail!("REDUCE on a non-callable {}", func.type_name())
    };
    let Value::Tuple(args) = args else {
        bail!("REDUCE arguments are not a tuple")
    };
    match name.as_str() {
        "collections.OrderedDict" if args.is_empty() => Ok(Value::Dict(Vec::new())),
        "torch._utils._rebuild_tensor_v2" if args.len() >= 4 => {
            let Value::Storage(storage) = &args[0] else {
                bail!("tensor without a storage")
            };
            Ok(Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: as_usize(&args[1])?,
                shape: usizes(&args[2])?,
                stride: usizes(&args[3])?,
            }))
        }
        "torch._utils._rebuild_parameter" if !args.is_empty() => {
            Ok(args.into_iter().next().unwrap())
        }
        _ => bail!(
            "unsupported call {name} with {} arguments in pickle",
            args.len()
        ),
    }
}

/// The pickle opcodes saerl reads (those of a PyTorch state dict) and writes, by their names in
/// Python's `pickletools`.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE3: u8 = 0x87;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const NONE: u8 = b'N';
    pub const BINFLOAT: u8 = b'G';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const BUILD: u8 = b'b';
}

/// Loads a pickle without executing anything.
pub fn load(b: &[u8]) -> Result<Value> {
    let mut m = Machine {
        b,
        at: 0,
        stack: Vec::new(),
        memo: HashMap::new(),
        budget: 1_000_000 + 8 * b.len(),
    };
    loop {
        let at = m.at;
        let code = m.u8()?;
        if let Some(v) = m.step(code, at)? {
            return Ok(v);
        }
    }
}

impl Machine<'_> {
    /// Executes the opcode `code` read at byte `at`; STOP gives the result.
    fn step(&mut self, code: u8, at: usize) -> Result<Option<Value>> {
        use op::*;
        match code {
            PROTO => {
                self.u8()?;
            }
            FRAME => {
                self.take(8)?;
            }
            STOP => return self.pop().map(Some),
            MARK => self.stack.push(Item::Mark),
            EMPTY_DICT | EMPTY_LIST | EMPTY_TUPLE | TUPLE | TUPLE1..=TUPLE3 => self.container(code)?,
            BINPUT | LONG_BINPUT | MEMOIZE => self.memo_put(code)?,
            BINGET | LONG_BINGET => self.memo_get(code)?,
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 | SHORT_BINBYTES | BINBYTES => {
                self.string(code)?
            }
            BININT | BININT1 | BININT2 | LONG1 | NEWTRUE | NEWFALSE | NONE | BINFLOAT => {
                self.number(code, at)?
            }
            GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(format!("{module}.{name}"))?;
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    bail!("STACK_GLOBAL needs two strings")
                };
                self.global(format!("{module}.{name}"))?;
            }
            REDUCE => {
                let args = self.pop()?;
                let func = self.pop()?;
                let v = reduce(func, args).with_context(|| format!("at pickle byte {at}"))?;
                self.push(v);
            }
            BINPERSID => self.persistent_id(at)?,
            SETITEM | SETITEMS | APPEND | APPENDS | BUILD => self.fill(code, at)?,
            other => bail!("forbidden or unsupported pickle opcode 0x{other:02x} at byte {at}: only the opcodes of a PyTorch state dict are accepted"),
        }
        Ok(None)
    }

    /// An empty container, or a tuple of the items above the mark (TUPLE) or on top (TUPLE1-3).
    fn container(&mut self, code: u8) -> Result<()> {
        let v = match code {
            op::EMPTY_DICT => Value::Dict(Vec::new()),
            op::EMPTY_LIST => Value::List(Vec::new()),
            op::EMPTY_TUPLE => Value::Tuple(Vec::new()),
            op::TUPLE => Value::Tuple(self.pop_mark()?),
            _ => {
                let n = (code - op::TUPLE1 + 1) as usize;
                let mut items = (0..n)
                    .map(|_| self.pop_nested())
                    .collect::<Result<Vec<_>>>()?;
                items.reverse();
                Value::Tuple(items)
            }
        };
        self.push(v);
        Ok(())
    }

    /// Stores the top of the stack in the memo, paying for the copy.
    fn memo_put(&mut self, code: u8) -> Result<()> {
        let idx = match code {
            op::BINPUT => self.u8()? as u32,
            op::LONG_BINPUT => self.u32()?,
            _ => self.memo.len() as u32,
        };
        let budget = self.budget;
        let nodes = measure(self.top()?, budget).0;
        self.charge(nodes)?;
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(())
    }

    /// Pushes a copy of a memo entry, paying for it.
    fn memo_get(&mut self, code: u8) -> Result<()> {
        let idx = if code == op::BINGET {
            self.u8()? as u32
        } else {
            self.u32()?
        };
        let v = self
            .memo
            .get(&idx)
            .with_context(|| format!("pickle refers to unknown memo {idx}"))?;
        let nodes = measure(v, self.budget).0;
        self.charge(nodes)?;
        let v = self.memo[&idx].clone();
        self.push(v);
        Ok(())
    }

    fn string(&mut self, code: u8) -> Result<()> {
        let v = match code {
            op::BINUNICODE => {
                let n = self.u32()? as usize;
                self.utf8(n)?
            }
            op::SHORT_BINUNICODE => {
                let n = self.u8()? as usize;
                self.utf8(n)?
            }
            op::BINUNICODE8 => {
                let n = u64::from_le_bytes(self.take(8)?.try_into().unwrap()) as usize;
                self.utf8(n)?
            }
            _ => {
                let n = if code == op::SHORT_BINBYTES {
                    self.u8()? as usize
                } else {
                    self.u32()? as usize
                };
                Value::Bytes(self.take(n)?.to_vec())
            }
        };
        self.push(v);
        Ok(())
    }

    fn number(&mut self, code: u8, at: usize) -> Result<()> {
        let v = match code {
            op::BININT => Value::Int(i32::from_le_bytes(self.take(4)?.try_into().unwrap()) as i64),
            op::BININT1 => Value::Int(self.u8()? as i64),
            op::BININT2 => Value::Int(self.u16()? as i64),
            op::LONG1 => {
                let n = self.u8()? as usize;
                if n > 8 {
                    bail!("integer too large in pickle at byte {at}");
                }
                let bytes = self.take(n)?;
                let sign = if bytes.last().is_some_and(|&x| x & 0x80 != 0) {
                    0xFF
                } else {
                    0
                };
                let mut buf = [sign; 8];
                buf[..n].copy_from_slice(bytes);
                Value::Int(i64::from_le_bytes(buf))
            }
            op::NEWTRUE => Value::Bool(true),
            op::NEWFALSE => Value::Bool(false),
            op::NONE => Value::None,
            _ => Value::Float(f64::from_be_bytes(self.take(8)?.try_into().unwrap())),
        };
        self.push(v);
        Ok(())
    }

    /// A tensor's storage, named by torch's persistent id ("storage", type, key, location, numel).
    fn persistent_id(&mut self, at: usize) -> Result<()> {
        let pid = self.pop()?;
        let Value::Tuple(t) = pid else {
            bail!("persistent id is not a tuple at byte {at}")
        };
        let storage = match t.as_slice() {
            [Value::Str(kind), Value::Global(ty), Value::Str(key), _location, numel]
                if kind == "storage" =>
            {
                StorageRef {
                    dtype: StorageType::from_global(ty)
                        .with_context(|| format!("unsupported storage type {ty}"))?,
                    key: key.clone(),
                    numel: as_usize(numel)?,
                }
            }
            _ => bail!("unsupported persistent id at pickle byte {at}"),
        };
        self.push(Value::Storage(storage));
        Ok(())
    }

    /// Adds items to the dict or list on top of the stack (BUILD: a state that carries no
    /// weights, dropped).
    fn fill(&mut self, code: u8, at: usize) -> Result<()> {
        match code {
            op::SETITEM => {
                let v = self.pop_nested()?;
                let k = self.pop_nested()?;
                match self.top()? {
                    Value::Dict(d) => d.push((k, v)),
                    other => bail!("SETITEM on a {}", other.type_name()),
                }
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                if items.len() % 2 != 0 {
                    bail!("SETITEMS with an odd number of items at byte {at}");
                }
                let mut it = items.into_iter();
                let d = match self.top()? {
                    Value::Dict(d) => d,
                    other => bail!("SETITEMS on a {}", other.type_name()),
                };
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    d.push((k, v));
                }
            }
            op::APPEND => {
                let v = self.pop_nested()?;
                match self.top()? {
                    Value::List(l) => l.push(v),
                    other => bail!("APPEND on a {}", other.type_name()),
                }
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                match self.top()? {
                    Value::List(l) => l.extend(items),
                    other => bail!("APPENDS on a {}", other.type_name()),
                }
            }
            _ => {
                // BUILD: an OrderedDict's state (torch's `_metadata`) carries no weights.
                self.pop()?;
                if !matches!(self.top()?, Value::Dict(_)) {
                    bail!("BUILD on a non-dict at pickle byte {at}");
                }
            }
        }
        Ok(())
    }
}

/// Serialises values with protocol 2 opcodes only, the way `torch.save` lays out a checkpoint.
/// Tensors are written as `_rebuild_tensor_v2` calls on persistent storages.
pub fn dump(v: &Value) -> Vec<u8> {
    let mut out = vec![op::PROTO, 2];
    write_value(v, &mut out);
    out.push(op::STOP);
    out
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(op::BINUNICODE);
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    if let Ok(v) = i32::try_from(i) {
        out.push(op::BININT);
        out.extend(v.to_le_bytes());
    } else {
        out.extend([op::LONG1, 8]);
        out.extend(i.to_le_bytes());
    }
}

fn write_tuple(items: &[Value], out: &mut Vec<u8>) {
    out.push(op::MARK);
    items.iter().for_each(|v| write_value(v, out));
    out.push(op::TUPLE);
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::None => out.push(op::NONE),
        Value::Bool(b) => out.push(if *b { op::NEWTRUE } else { op::NEWFALSE }),
        Value::Int(i) => write_int(*i, out),
        Value::Float(f) => {
            out.push(op::BINFLOAT);
            out.extend(f.to_be_bytes());
        }
        Value::Str(s) => write_str(s, out),
        Value::Bytes(b) => {
            out.push(op::BINBYTES);
            out.extend((b.len() as u32).to_le_bytes());
            out.extend(b);
        }
        Value::Tuple(items) => write_tuple(items, out),
        Value::List(items) => {
            out.extend([op::EMPTY_LIST, op::MARK]);
            items.iter().for_each(|v| write_value(v, out));
            out.push(op::APPENDS);
        }
        Value::Dict(items) => {
            // GLOBAL collections.OrderedDict, EMPTY_TUPLE, REDUCE: an empty OrderedDict; MARK.
            out.extend(b"ccollections\nOrderedDict\n)R(");
            for (k, v) in items {
                write_value(k, out);
                write_value(v, out);
            }
            out.push(op::SETITEMS);
        }
        Value::Tensor(t) => {
            // GLOBAL torch._utils._rebuild_tensor_v2, MARK, then its arguments.
            out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
            write_value(&Value::Storage(t.storage.clone()), out);
            write_int(t.offset as i64, out);
            write_tuple(
                &t.shape
                    .iter()
                    .map(|&d| Value::Int(d as i64))
                    .collect::<Vec<_>>(),
                out,
            );
            write_tuple(
                &t.stride
                    .iter()
                    .map(|&d| Value::Int(d as i64))
                    .collect::<Vec<_>>(),
                out,
            );
            out.push(op::NEWFALSE);
            // GLOBAL collections.OrderedDict, EMPTY_TUPLE, REDUCE: empty backward hooks.
            out.extend(b"ccollections\nOrderedDict\n)R");
            out.push(op::TUPLE);
            out.push(op::REDUCE);
        }
        Value::Storage(s) => {
            out.push(op::MARK);
            write_str("storage", out);
            out.push(op::GLOBAL);
            out.extend(s.dtype.global().as_bytes());
            out.push(b'\n');
            write_str(&s.key, out);
            write_str("cpu", out);
            write_int(s.numel as i64, out);
            out.push(op::TUPLE);
            out.push(op::BINPERSID);
        }
        Value::Global(g) => {
            out.push(op::GLOBAL);
            let (module, name) = g.rsplit_once('.').unwrap_or(("", g));
            out.extend(format!("{module}\n{name}\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_config_values() {
        let v = Value::Dict(vec![
            (Value::Str("k".into()), Value::Int(64)),
            (Value::Str("big".into()), Value::Int(1 << 40)),
            (Value::Str("neg".into()), Value::Int(-3)),
            (Value::Str("loss".into()), Value::Float(0.25)),
            (Value::Str("from".into()), Value::None),
            (
                Value::Str("xs".into()),
                Value::List(vec![Value::Bool(true), Value::Tuple(vec![])]),
            ),
        ]);
        assert_eq!(load(&dump(&v)).unwrap(), v);
    }

    #[test]
    fn refuses_arbitrary_globals() {
        let err = load(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsR.").unwrap_err();
        assert!(
            err.to_string().contains("forbidden global os.system"),
            "{err}"
        );
    }
}
