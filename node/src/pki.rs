//! Development PKI: a throwaway federation CA and node certificates whose SAN carries the
//! agency id (plus `localhost`, 127.0.0.1 and ::1 so that local clients can verify them).
//!
//! Production teams may bring their own CA; these files are only what the dev setup, the
//! tests and `weft pki` need.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::config::TlsFiles;
use crate::model::AgencyId;

/// PKI failures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// The CA certificate's path in a CA directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

/// Creates a CA in `dir` (`ca.crt`, `ca.key`), valid for ten years.
pub fn init_ca(dir: &Path, name: &str) -> Result<PathBuf, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Weft federation");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write(&ca_cert_path(dir), &cert.pem(), false)?;
    write(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    Ok(ca_cert_path(dir))
}

/// Issues a node certificate for `agency`, signed by the CA in `ca_dir`, into `out_dir`
/// (`<agency>.crt`, `<agency>.key`), valid for `days`. Returns the files with the CA.
pub fn issue(
    ca_dir: &Path,
    agency: &AgencyId,
    out_dir: &Path,
    days: i64,
) -> Result<TlsFiles, PkiError> {
    let ca_key = KeyPair::from_pem(&read(&ca_dir.join("ca.key"))?)?;
    let ca_pem = read(&ca_cert_path(ca_dir))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![agency.to_string(), "localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agency.as_str());
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    let cert = params.signed_by(&key, &issuer)?;
    let files = TlsFiles {
        cert: out_dir.join(format!("{agency}.crt")),
        key: out_dir.join(format!("{agency}.key")),
        ca: out_dir.join("ca.crt"),
    };
    write(&files.cert, &cert.pem(), false)?;
    write(&files.key, &key.serialize_pem(), true)?;
    if files.ca != ca_cert_path(ca_dir) {
        write(&files.ca, &ca_pem, false)?;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_certificate_naming_the_agency() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(&dir.path().join("ca"), "test CA").unwrap();
        let agency = AgencyId::parse("clinic.test").unwrap();
        let files = issue(
            &dir.path().join("ca"),
            &agency,
            &dir.path().join("clinic"),
            30,
        )
        .unwrap();
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(files.key.is_file() && files.ca.is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
