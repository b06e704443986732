//! The `mcpproxy-oauth` command line.

fn main() {
    eprintln!("mcpproxy-oauth: no commands are available in this build yet");
    std::process::exit(2);
}
