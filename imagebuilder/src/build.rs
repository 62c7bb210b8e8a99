//! One build: inputs → id → (skip | compose → outputs → manifest → publish by rename).

use crate::error::BuildError;
use crate::hashing::HashingWriter;
use crate::recipe::{Compression, Output, Recipe};
use crate::store::{self, Manifest, OutputFile};
use crate::tree::{Kind, Node, Tree};
use crate::{inputs, layers, source, ProfileLayer, Progress};
use pxeforge_store::{PublishOptions, StoreError, Sums};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct BuildRequest<'a> {
    pub site_dir: &'a Path,
    pub state_dir: &'a Path,
    pub recipe: &'a Recipe,
    pub profile: &'a ProfileLayer,
    pub force: bool,
    pub progress: &'a dyn Progress,
}

#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub id: String,
    /// The published build directory.
    pub dir: PathBuf,
    /// True when an identical build was already published and nothing was built.
    pub skipped: bool,
    pub outputs: Vec<OutputFile>,
}

pub fn build(req: BuildRequest) -> Result<BuildOutcome, BuildError> {
    let recipe = req.recipe;
    let outputs = inputs::effective_outputs(recipe);
    if outputs.is_empty() {
        return Err(BuildError::Recipe(format!(
            "recipe {}: no known outputs",
            recipe.name
        )));
    }
    if !store::valid_name(&recipe.name) || !store::valid_name(&req.profile.name) {
        return Err(BuildError::Recipe(format!(
            "recipe {:?} / profile {:?}: names may hold only letters, digits, - _ .",
            recipe.name, req.profile.name
        )));
    }
    crate::tools::check_tools(&outputs)?;
    req.progress.stage("inputs");
    let tool_versions = crate::tools::versions(&outputs);
    let mut cache = inputs::HashCache::load(req.state_dir);
    let collected = inputs::collect(
        req.site_dir,
        recipe,
        req.profile,
        &tool_versions,
        &mut cache,
    );
    cache.save();
    let (inputs, id) = collected?;

    let images = store::image_store(req.state_dir);
    let profile_dir = images
        .key_dir(&[&recipe.name, &req.profile.name])
        .ok_or_else(|| BuildError::Recipe(format!("recipe {}: invalid names", recipe.name)))?;
    let final_dir = profile_dir.join(&id);
    if !req.force {
        // Under the store lock, so that a gc cannot remove the build between this look and the
        // pointer moving to it.
        let lock = images.lock().map_err(store_err)?;
        if pxeforge_store::resolve(&profile_dir, &id).is_some() {
            if let Ok(m) = store::read_manifest(&final_dir) {
                lock.set_current(&profile_dir, &id).map_err(store_err)?;
                tracing::info!(recipe = %recipe.name, profile = %req.profile.name, %id, "unchanged, skipped");
                return Ok(BuildOutcome {
                    id,
                    dir: final_dir,
                    skipped: true,
                    outputs: m.outputs,
                });
            }
        }
    }

    // Leftovers of killed builds would otherwise pile up until the next gc; failing to remove
    // them is no reason not to build.
    if let Err(e) = images.clean_stale_tmp() {
        tracing::warn!(error = %e, "stale temporaries not cleaned");
    }
    // Locked for the whole build (which is how cleanup knows it is alive); removed when dropped,
    // whether the build publishes or fails.
    let staging = images.staging("build-").map_err(store_err)?;
    let out_dir = staging.out().to_path_buf();
    let work = staging.path().join("work");
    std::fs::create_dir(&work).map_err(BuildError::io(&work))?;

    req.progress.stage("compose");
    let tree = compose(req.site_dir, recipe, req.profile, &work)?;
    let epoch = recipe.source_date_epoch();
    let args = crate::kernel_args(recipe, req.profile);
    let mut published = Vec::new();
    let dest = |o: Output| {
        if recipe.wants(o) {
            out_dir.clone()
        } else {
            work.clone()
        }
    };

    let kernel_path = if outputs.contains(&Output::Kernel) {
        req.progress.stage("kernel");
        let k = find_kernel(req.site_dir, recipe, &tree)?;
        let path = dest(Output::Kernel).join("vmlinuz");
        let f = write_output(&path, Output::Kernel, |w| {
            std::io::copy(&mut k.open()?, w)?;
            Ok(None)
        })?;
        if recipe.wants(Output::Kernel) {
            published.push(f);
        }
        Some(path)
    } else {
        None
    };

    let initramfs_path = if outputs.contains(&Output::Initramfs) {
        req.progress.stage("initramfs");
        if !matches!(
            tree.get("init").map(|n| &n.kind),
            Some(Kind::File(_) | Kind::Symlink(_) | Kind::Hardlink(..))
        ) {
            tracing::warn!(recipe = %recipe.name, "the root has no /init: the initramfs will not boot by itself");
        }
        let path = dest(Output::Initramfs).join("initramfs.img");
        let comp = recipe.spec.initramfs.compression;
        let f = write_output(&path, Output::Initramfs, |w| {
            let n = crate::compress::compressed(w, comp, |cw| {
                crate::cpio::write_cpio(&tree, epoch, cw, req.progress)
            })?;
            Ok(Some(n))
        })?;
        if recipe.wants(Output::Initramfs) {
            published.push(f);
        }
        Some(path)
    } else {
        None
    };

    if outputs.contains(&Output::Tar) {
        req.progress.stage("tar");
        let comp = recipe.spec.tar.compression;
        let name = match comp {
            Compression::Gzip => "root.tar.gz",
            Compression::Zstd => "root.tar.zst",
            Compression::None => "root.tar",
        };
        published.push(write_output(&out_dir.join(name), Output::Tar, |w| {
            crate::compress::compressed(w, comp, |cw| {
                crate::tarout::write_tar(&tree, epoch, cw, req.progress).map(|_| 0)
            })?;
            Ok(None)
        })?);
    }

    let needs_stage = outputs.contains(&Output::Ext4);
    let staged = work.join("root");
    if needs_stage {
        req.progress.stage("stage");
        crate::stage::stage(&tree, &staged, epoch)?;
    }
    if outputs.contains(&Output::Squashfs) {
        req.progress.stage("squashfs");
        let p = out_dir.join("root.squashfs");
        crate::squashfs::build(
            &tree,
            &p,
            epoch,
            recipe.spec.squashfs.compression,
            req.progress,
        )?;
        published.push(tool_output(&p, Output::Squashfs)?);
    }
    let ext4_path = if outputs.contains(&Output::Ext4) {
        req.progress.stage("ext4");
        let p = dest(Output::Ext4).join("root.ext4");
        crate::ext4::build(
            &tree,
            &staged,
            &work,
            &p,
            &id,
            epoch,
            crate::ext4::size_for(&tree),
        )?;
        if recipe.wants(Output::Ext4) {
            published.push(tool_output(&p, Output::Ext4)?);
        }
        Some(p)
    } else {
        None
    };
    if needs_stage {
        // The staged copy can be large; free the space before the disk is assembled.
        let _ = std::fs::remove_dir_all(&staged);
    }

    if let (Some(k), Some(i), Some(e)) = (&kernel_path, &initramfs_path, &ext4_path) {
        if outputs.contains(&Output::Disk) {
            req.progress.stage("disk");
            let p = dest(Output::Disk).join("disk.raw");
            let parts = crate::disk::DiskParts {
                kernel: k,
                initramfs: i,
                root_ext4: e,
                kernel_args: &args,
                esp_mib: recipe.spec.disk.esp_mib,
                size_mib: recipe.spec.disk.size_mib,
            };
            let (size, sha256) = crate::disk::build(&parts, &id, epoch, &work, &p)?;
            if recipe.wants(Output::Disk) {
                published.push(OutputFile {
                    name: "disk".into(),
                    file: "disk.raw".into(),
                    size,
                    sha256,
                    uncompressed_size: None,
                });
            }
            if outputs.contains(&Output::Qcow2) {
                req.progress.stage("qcow2");
                let q = out_dir.join("disk.qcow2");
                crate::tools::run(
                    crate::tools::cmd("qemu-img")
                        .args(["convert", "-f", "raw", "-O", "qcow2"])
                        .arg(&p)
                        .arg(&q),
                )?;
                published.push(tool_output(&q, Output::Qcow2)?);
            }
        }
    }

    req.progress.stage("publish");
    published.sort_by(|a, b| a.file.cmp(&b.file));
    let built_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let manifest = Manifest {
        recipe: recipe.name.clone(),
        profile: req.profile.name.clone(),
        id: id.clone(),
        built_at,
        source_date_epoch: epoch,
        kernel_args: args,
        inputs,
        tools: tool_versions,
        outputs: published.clone(),
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Recipe(e.to_string()))?;
    let m = write_output(&out_dir.join(store::MANIFEST), Output::Kernel, |w| {
        w.write_all(&json)?;
        w.write_all(b"\n")?;
        Ok(None)
    })?;
    // The checksums were computed as the outputs were written; nothing is read back.
    let mut sums = Sums::new();
    for (file, sha256) in published
        .iter()
        .map(|o| (o.file.as_str(), o.sha256.as_str()))
        .chain([(store::MANIFEST, m.sha256.as_str())])
    {
        sums.insert(file, sha256)
            .map_err(|e| BuildError::source(&out_dir, e.to_string()))?;
    }
    pxeforge_store::write_sums(&out_dir.join(store::SUMS), &sums).map_err(store_err)?;

    // fsyncs every file and directory of out/, renames it to <profile>/<id> and moves current,
    // under the store lock. A forced rebuild swaps itself in for the published build of the
    // same id (repairing one that verify found damaged); otherwise a build of the same inputs
    // that published first is kept: its outputs are the same bytes.
    let opts = PublishOptions {
        replace: req.force,
        set_current: true,
    };
    let p = staging
        .publish(&profile_dir, &id, opts)
        .map_err(store_err)?;
    tracing::info!(recipe = %recipe.name, profile = %req.profile.name, %id, outcome = ?p.outcome, "published");
    Ok(BuildOutcome {
        id,
        dir: p.dir,
        skipped: false,
        outputs: published,
    })
}

/// Store errors as build errors, keeping the io::Error of an I/O failure as the source.
fn store_err(e: StoreError) -> BuildError {
    match e {
        StoreError::Io { path, source } => BuildError::Io { path, source },
        e => BuildError::source(e.path(), e.detail()),
    }
}

/// Composes the root: base, recipe layers, profile layer.
pub fn compose(
    site: &Path,
    recipe: &Recipe,
    profile: &ProfileLayer,
    work: &Path,
) -> Result<Tree, BuildError> {
    let mut tree = Tree::new();
    let base = recipe.spec.base.get_ref();
    let mut spool = source::Spool::new(work.join("spool"))?;
    if let Some(d) = &base.dir {
        source::read_dir_base(
            &mut tree,
            &layers::site_path(site, d.get_ref())?,
            base.owner,
        )?;
    } else if let Some(t) = &base.tarball {
        let p = layers::site_path(site, t.get_ref())?;
        source::apply_tar(
            &mut tree,
            source::open_decompressed(&p)?,
            &p,
            &mut spool,
            false,
        )?;
    } else if let Some(o) = &base.oci {
        let layout = layers::site_path(site, o.get_ref())?;
        for layer in source::oci_layers(&layout, base.oci_ref.as_deref())? {
            source::apply_tar(
                &mut tree,
                source::open_decompressed(&layer)?,
                &layer,
                &mut spool,
                true,
            )?;
        }
    } else if !base.scratch {
        return Err(BuildError::Recipe(
            "[base] needs one of dir, tarball, oci, scratch".into(),
        ));
    }
    layers::apply_recipe(&mut tree, site, recipe)?;
    layers::apply_profile(&mut tree, site, profile)?;
    tree.fix_hardlinks();
    Ok(tree)
}

/// The kernel: named in the recipe, or the only one under /boot, or under /usr/lib/modules/*/.
pub fn find_kernel(
    site: &Path,
    recipe: &Recipe,
    tree: &Tree,
) -> Result<crate::tree::Content, BuildError> {
    let as_file = |path: &str| -> Option<crate::tree::Content> {
        let p = tree.resolve(path)?;
        match tree.get(&p) {
            Some(Node {
                kind: Kind::File(c),
                ..
            }) => Some(c.clone()),
            Some(Node {
                kind: Kind::Hardlink(_, c),
                ..
            }) => Some(c.clone()),
            _ => None,
        }
    };
    if let Some(k) = &recipe.spec.kernel {
        let k = k.get_ref();
        if let Some(f) = &k.file {
            let p = layers::site_path(site, f)?;
            let size = std::fs::metadata(&p).map_err(BuildError::io(&p))?.len();
            return Ok(crate::tree::Content::Host { path: p, size });
        }
        if let Some(p) = &k.path {
            return as_file(p).ok_or_else(|| {
                BuildError::Recipe(format!("[kernel] path {p:?} is not a file in the image"))
            });
        }
    }
    // /boot first: CentOS keeps the same kernel in /boot and in /usr/lib/modules/<kver>/.
    let (boot, modules) = kernel_candidates(tree.entries.keys().map(String::as_str));
    let resolve_all = |v: Vec<&str>| {
        let mut r: Vec<String> = v.into_iter().filter_map(|k| tree.resolve(k)).collect();
        r.sort();
        r.dedup();
        r
    };
    let mut found = resolve_all(boot);
    if found.is_empty() {
        found = resolve_all(modules);
    }
    match found.as_slice() {
        [one] => as_file(one)
            .ok_or_else(|| BuildError::Recipe(format!("kernel {one:?} is not a regular file"))),
        [] => Err(BuildError::Recipe(
            "no kernel in /boot or /usr/lib/modules/*/vmlinuz: name one in [kernel]".into(),
        )),
        many => Err(BuildError::Recipe(format!(
            "several kernels ({}): name one with [kernel] path",
            many.join(", ")
        ))),
    }
}

/// Kernel paths of a root: (`boot/vmlinuz`, `boot/vmlinuz-*`), (`[usr/]lib/modules/*/vmlinuz`).
pub fn kernel_candidates<'a>(paths: impl Iterator<Item = &'a str>) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut boot, mut modules) = (Vec::new(), Vec::new());
    for k in paths {
        if k.strip_prefix("boot/").is_some_and(|n| {
            n == "vmlinuz"
                || (n.starts_with("vmlinuz-") && !n.contains('/') && !n.ends_with(".hmac"))
        }) {
            boot.push(k);
        } else if ["usr/lib/modules/", "lib/modules/"].iter().any(|pre| {
            k.strip_prefix(pre)
                .is_some_and(|rest| rest.split('/').count() == 2 && rest.ends_with("/vmlinuz"))
        }) {
            modules.push(k);
        }
    }
    (boot, modules)
}

/// Writes one output through a hashing writer, syncs it, and describes it.
fn write_output(
    path: &Path,
    kind: Output,
    f: impl FnOnce(&mut HashingWriter<BufWriter<File>>) -> std::io::Result<Option<u64>>,
) -> Result<OutputFile, BuildError> {
    let file = File::create(path).map_err(BuildError::io(path))?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    let uncompressed = f(&mut w).map_err(BuildError::io(path))?;
    let (buf, size, sha256) = w.finish();
    let file = buf
        .into_inner()
        .map_err(|e| BuildError::io(path)(e.into_error()))?;
    file.sync_all().map_err(BuildError::io(path))?;
    Ok(output_file(path, kind, size, sha256, uncompressed))
}

fn output_file(
    path: &Path,
    kind: Output,
    size: u64,
    sha256: String,
    uncompressed_size: Option<u64>,
) -> OutputFile {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    OutputFile {
        name: kind.name().into(),
        file,
        size,
        sha256,
        uncompressed_size,
    }
}

/// Describes a file a standard tool wrote (hashed once as it is described), after an fsync:
/// mksquashfs, mkfs.ext4 and qemu-img leave their output in the page cache.
fn tool_output(path: &Path, kind: Output) -> Result<OutputFile, BuildError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(BuildError::io(path))?;
    let (size, sha256) = crate::hashing::hash_file(path).map_err(BuildError::io(path))?;
    Ok(output_file(path, kind, size, sha256, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_candidates_by_place() {
        let paths = [
            "boot/vmlinuz-5.14.0-1.el9.x86_64",
            "boot/.vmlinuz-5.14.0-1.el9.x86_64.hmac",
            "boot/vmlinuz-5.14.0-1.el9.x86_64.hmac",
            "boot/grub2/vmlinuz-x",
            "usr/lib/modules/5.14.0-1.el9.x86_64/vmlinuz",
            "usr/lib/modules/5.14.0-1.el9.x86_64/kernel/vmlinuz",
            "lib/modules/6.1/vmlinuz",
        ];
        let (boot, modules) = kernel_candidates(paths.into_iter());
        assert_eq!(boot, ["boot/vmlinuz-5.14.0-1.el9.x86_64"]);
        assert_eq!(
            modules,
            [
                "usr/lib/modules/5.14.0-1.el9.x86_64/vmlinuz",
                "lib/modules/6.1/vmlinuz"
            ]
        );
    }
}
