fn main() -> std::process::ExitCode {
    lockfs::cli::main()
}
