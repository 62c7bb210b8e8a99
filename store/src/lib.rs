//! Content-addressed stores: atomic publish, current pointers, SHA256SUMS, verify, gc
