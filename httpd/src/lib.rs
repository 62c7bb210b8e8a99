//! pxeforge's HTTP/1.1 transport: framing, connection loop, sendfile, confined files, ranges, limits
