//! Confined opens of files under a served root (openat2 RESOLVE_BENEATH, or an O_NOFOLLOW walk)
