//! Option 43 for PXE clients (PXE 2.1 specification, §2.2.6 vendor options).

/// Sub-option 6: discovery control.
const DISCOVERY_CONTROL: u8 = 6;
/// Bit 3: a boot file name is in the reply, download it without boot server discovery or menu.
const USE_BOOT_FILE: u8 = 8;
const BOOT_MENU: u8 = 9;
const MENU_PROMPT: u8 = 10;
const BOOT_ITEM: u8 = 71;
/// Vendor-specific boot server type: the one item in our menu.
const SERVER_TYPE: [u8; 2] = [0x80, 0x00];
const LABEL: &[u8] = b"pxeforge";

/// Some firmware (real UEFI servers, pixiecore #43) ignores a proxy offer without a boot menu and
/// prompt, even when discovery control says "use the boot file"; we send all three. Timeout 0
/// selects the only menu item at once. When the client asked on port 4011 for a boot item
/// (sub-option 71), the reply must carry that item back.
pub fn vendor_options(request_vendor_options: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(&[DISCOVERY_CONTROL, 1, USE_BOOT_FILE]);
    let menu_len = 3 + LABEL.len();
    out.extend_from_slice(&[
        BOOT_MENU,
        menu_len as u8,
        SERVER_TYPE[0],
        SERVER_TYPE[1],
        LABEL.len() as u8,
    ]);
    out.extend_from_slice(LABEL);
    out.extend_from_slice(&[MENU_PROMPT, 1 + LABEL.len() as u8, 0]);
    out.extend_from_slice(LABEL);
    if let Some(item) = request_vendor_options.and_then(boot_item) {
        out.extend_from_slice(&[BOOT_ITEM, 4]);
        out.extend_from_slice(&item);
    }
    out.push(255);
    out
}

/// Sub-option 71 (boot item: type + layer) from a client's option 43, if well formed.
pub fn boot_item(vendor_options: &[u8]) -> Option<[u8; 4]> {
    let mut rest = vendor_options;
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => {
                rest = tail;
                continue;
            }
            255 => return None,
            _ => {}
        }
        let (&len, tail) = tail.split_first()?;
        let value = tail.get(..usize::from(len))?;
        if code == BOOT_ITEM {
            return value.try_into().ok();
        }
        rest = &tail[usize::from(len)..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_options() {
        let v = vendor_options(None);
        assert_eq!(&v[..3], &[6, 1, 8]);
        assert_eq!(&v[3..8], &[9, 11, 0x80, 0x00, 8]);
        assert_eq!(&v[8..16], b"pxeforge");
        assert_eq!(&v[16..19], &[10, 9, 0]);
        assert_eq!(*v.last().unwrap(), 255);
        assert_eq!(v.len(), 28);
    }

    #[test]
    fn boot_item_echo() {
        let req = [71, 4, 0x80, 0x00, 0x00, 0x00, 255];
        assert_eq!(boot_item(&req), Some([0x80, 0, 0, 0]));
        let v = vendor_options(Some(&req));
        assert_eq!(&v[v.len() - 7..], &[71, 4, 0x80, 0, 0, 0, 255]);
        assert_eq!(boot_item(&[71, 9, 1]), None);
        assert_eq!(boot_item(&[71, 3, 1, 2, 3]), None);
        assert_eq!(boot_item(&[]), None);
    }
}
