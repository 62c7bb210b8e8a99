//! pxeforge vm-test: boot a profile in a QEMU VM on a private network
