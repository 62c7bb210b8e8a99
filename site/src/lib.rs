//! The pxeforge site model: settings, profiles, hosts, MACs, diagnostics, loading and validation
