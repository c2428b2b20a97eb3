//! PURE explanation engine: decoded events in, findings out. Never touches the kernel, the
//! clock or /proc. (To be written.)
