//! Load the kernel programs, attach them, read the ring buffer, decode events. (To be written.)
