//! The scenario's certificates: a throwaway CA and a leaf for `bench.test`
//! and `*.bench.test` it signs (ECDSA P-256, rcgen's default), written as
//! PEM files both servers read.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};

/// The certificate files, and the CA to verify them with.
pub struct BenchCerts {
    /// The chain both servers serve: the leaf, then the CA.
    pub chain: PathBuf,
    /// The leaf's private key (PKCS#8).
    pub key: PathBuf,
    /// The CA certificate.
    pub ca: CertificateDer<'static>,
}

/// Makes a CA and a leaf for `names` it signs, and writes them into `dir`.
pub fn write(dir: &Path, names: &[&str]) -> Result<BenchCerts> {
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Gannet bench CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = date_time_ymd(2020, 1, 1);
    ca_params.not_after = date_time_ymd(2045, 1, 1);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())?;
    leaf_params.distinguished_name = DistinguishedName::new();
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("bench"),
    );
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.not_before = date_time_ymd(2020, 1, 1);
    leaf_params.not_after = date_time_ymd(2040, 1, 1);
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    let certs = BenchCerts {
        chain: dir.join("bench-chain.pem"),
        key: dir.join("bench-key.pem"),
        ca: ca_cert.der().clone(),
    };
    std::fs::write(
        &certs.chain,
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
    )?;
    std::fs::write(&certs.key, leaf_key.serialize_pem())?;
    Ok(certs)
}
