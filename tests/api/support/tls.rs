//! A TLS endpoint in front of the real broker, with a certificate for `localhost` issued by a
//! throwaway CA: the daemon's `amqps://` path is tested end to end without a managed broker.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

pub struct TlsBroker {
    pub port: u16,
    /// PEM of the CA that issued the endpoint's certificate.
    pub ca_file: PathBuf,
}

impl TlsBroker {
    pub async fn start() -> TlsBroker {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "notify-bridge test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();

        let ca_file =
            std::env::temp_dir().join(format!("nb-test-ca-{}.pem", crate::support::unique("ca")));
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![server_cert.der().clone()], key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target: Arc<str> = super::broker_addr().into();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    // A client that rejects our certificate ends the handshake here.
                    let Ok(mut tls) = acceptor.accept(inbound).await else {
                        return;
                    };
                    let Ok(mut broker) = TcpStream::connect(&*target).await else {
                        return;
                    };
                    let _ = copy_bidirectional(&mut tls, &mut broker).await;
                });
            }
        });
        TlsBroker { port, ca_file }
    }

    pub fn url(&self) -> String {
        // The broker under test's credentials and vhost, through this endpoint.
        let plain = super::broker_url_via(&format!("localhost:{}", self.port));
        format!(
            "amqps://{}",
            plain.split_once("://").map_or(plain.as_str(), |(_, r)| r)
        )
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
