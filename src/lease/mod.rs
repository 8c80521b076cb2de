//! The pure lease engine: no I/O, an injected clock.
