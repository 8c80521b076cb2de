//! Safe wrappers over the *at() syscalls the overlay and the proxy use.
