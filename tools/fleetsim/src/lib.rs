//! pxeforge fleet-sim: a simulated fleet booting against a real server
