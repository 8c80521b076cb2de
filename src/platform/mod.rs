//! Platform facts behind small interfaces: thread to process, start time, exit watch.
