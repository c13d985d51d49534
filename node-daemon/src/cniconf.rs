//! The CNI configuration file for podnet-cni, written atomically and only on change.
//! Its format is [`podnet_contract::ConfList`], the type podnet-cni parses.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
pub use podnet_contract::CONFLIST_FILE as CONFLIST;
use podnet_contract::ConfList;

/// The conflist text for this node; `firewall` is where podnet-cni puts hostPort
/// mappings (the backend the daemon chose).
pub fn render(
    pod_cidrs: &[IpNet],
    mtu: u32,
    bridge: &str,
    data_dir: &Path,
    firewall: Option<&str>,
) -> String {
    let cidrs: Vec<String> = pod_cidrs.iter().map(ToString::to_string).collect();
    ConfList::for_node(
        &cidrs,
        mtu,
        bridge,
        &data_dir.display().to_string(),
        firewall,
    )
    .render()
}

/// Writes `content` to `dir/10-podnet.conflist` unless it is there already: a temporary
/// name runtimes ignore (a dot file without a config extension), fsync, rename.
/// Returns whether it wrote.
pub fn write_if_changed(dir: &Path, content: &str) -> std::io::Result<bool> {
    let path = dir.join(CONFLIST);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == content) {
        return Ok(false);
    }
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = dir.join(format!(".{CONFLIST}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(true)
}

/// Copies `src` to `dir/name` atomically (temporary file, fsync, rename), executable.
pub fn install_binary(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    let dst = dir.join(name);
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}
