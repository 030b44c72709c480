//! `tollgate certs`: a cluster CA and role certificates for mutual TLS on the store's port
//! (DESIGN.md §11, `tollgate_proto::tls`). For tests, `tollgate dev` and small deployments;
//! certificates from any other CA work the same if they carry the role's DNS name
//! (`store.tollgate`, `gateway.tollgate`, `admin.tollgate`).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::path::{Path, PathBuf};
use tollgate_proto::tls::Role;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const CA_NAME: &str = "Tollgate cluster CA";

#[derive(Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    cmd: CertsCmd,
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a cluster CA in --dir: `ca.pem` (give it to every party) and `ca-key.pem`
    /// (keep it offline; it signs every certificate).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a certificate for a role, signed by the CA in --dir: `<name>.pem` and
    /// `<name>-key.pem` there.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// store (store nodes: serve and speak Raft), gateway (config, leases, usage; reads the
        /// usage export), admin (operators and billing tools).
        #[arg(long)]
        role: String,
        /// File name stem, e.g. `store-1` or `gw-eu-1`.
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.cmd {
        CertsCmd::Init { dir, days } => {
            init(&dir, days)?;
            println!("{}", dir.join(CA_CERT).display());
        }
        CertsCmd::Issue {
            dir,
            role,
            name,
            days,
        } => {
            let role = Role::parse(&role)
                .with_context(|| format!("unknown role '{role}': use store, gateway or admin"))?;
            let (cert, key) = issue(&dir, role, &name, days)?;
            println!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}

fn validity(p: &mut CertificateParams, days: u32) -> anyhow::Result<()> {
    if days == 0 || days > 36_500 {
        bail!("--days must be between 1 and 36500");
    }
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(i64::from(days));
    Ok(())
}

fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Creates the CA in `dir`; refuses to replace one.
pub fn init(dir: &Path, days: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in [CA_CERT, CA_KEY] {
        if dir.join(f).exists() {
            bail!(
                "{} already exists: a CA is there (remove it first to make a new one)",
                dir.join(f).display()
            );
        }
    }
    let mut p = ca_params()?;
    validity(&mut p, days)?;
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    write_private(&dir.join(CA_KEY), &key.serialize_pem())?;
    std::fs::write(dir.join(CA_CERT), cert.pem())?;
    Ok(())
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
        && name != "ca";
    if !ok {
        bail!(
            "--name '{name}' must be 1-64 letters, digits, '-', '_' or '.' (a file name stem), and not `ca`"
        );
    }
    Ok(())
}

/// Issues `<name>.pem` / `<name>-key.pem` in `dir` for `role`, signed by the CA there.
pub fn issue(dir: &Path, role: Role, name: &str, days: u32) -> anyhow::Result<(PathBuf, PathBuf)> {
    check_name(name)?;
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "reading the CA key {} (run `tollgate certs init --dir {}` first)",
            ca_key_path.display(),
            dir.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).context("the CA key is not a PEM private key")?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut p = CertificateParams::new(vec![role.dns_name().to_owned()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{name} ({})", role.as_str()));
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    validity(&mut p, days)?;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    write_private(&key_path, &key.serialize_pem())?;
    std::fs::write(&cert_path, cert.pem())?;
    Ok((cert_path, key_path))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    Ok(())
}
