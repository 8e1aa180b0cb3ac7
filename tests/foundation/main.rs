//! Foundation tests: import of published `.pt` trees, UDFs and saved queries against the
//! reference fixtures (PyTorch, verl), bad input, the REPL, plots and the demo.

mod bad_input;
mod common;
mod crash;
mod differential;
mod flight;
mod hostile;
mod import_pt;
mod interop;
mod repl;
mod rewards;
mod rough_edges;
mod serve;
mod sessions;
#[path = "../common/mod.rs"]
mod shared;
mod udfs;
