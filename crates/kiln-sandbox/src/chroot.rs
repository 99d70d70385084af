//! namespace sandbox
pub fn init_main() -> ! { std::process::exit(125) }
