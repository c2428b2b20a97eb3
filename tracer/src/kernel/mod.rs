//! What the running kernel offers: BTF offsets and enum values, tracefs formats, doctor.
//! (To be written.)
