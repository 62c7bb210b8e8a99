//! The native parts of the image builder, timed by bench/imagebuild/run.sh:
//! `bench hash FILE` prints the sha256 of FILE;
//! `bench initramfs DIR OUT [gzip|zstd]` writes DIR as a compressed cpio newc initramfs.

use pxeforge_imagebuilder as ib;
use std::io::Write;
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hash") if args.len() == 2 => {
            let (n, h) = ib::hashing::hash_file(Path::new(&args[1]))?;
            println!("{h}  {} ({n} bytes)", args[1]);
        }
        Some("initramfs") if args.len() >= 3 => {
            let comp = match args.get(3).map(String::as_str) {
                Some("zstd") => ib::recipe::Compression::Zstd,
                Some("none") => ib::recipe::Compression::None,
                _ => ib::recipe::Compression::Gzip,
            };
            let mut tree = ib::tree::Tree::new();
            ib::source::read_dir_base(&mut tree, Path::new(&args[1]), Some([0, 0]))?;
            let f = std::fs::File::create(&args[2])?;
            let mut w =
                ib::hashing::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
            let n = ib::compress::compressed(&mut w, comp, |cw| {
                ib::cpio::write_cpio(&tree, 0, cw, &ib::NoProgress)
            })?;
            w.flush()?;
            let (_, size, sha) = w.finish();
            println!(
                "{sha}  {} ({size} bytes, {n} uncompressed, {} entries)",
                args[2],
                tree.entries.len()
            );
        }
        _ => {
            eprintln!("usage: bench hash FILE | bench initramfs DIR OUT [gzip|zstd|none]");
            std::process::exit(2);
        }
    }
    Ok(())
}
