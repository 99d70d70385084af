fn main() { kiln_sandbox::maybe_run_init(); }
