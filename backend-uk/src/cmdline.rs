//! Kernel command line: `key=value` words separated by spaces (host-testable).
//!
//! | word | meaning | default |
//! |---|---|---|
//! | `janus.node=ID` | node id (`x-janus-node`) | `uk-node` |
//! | `janus.token=T` | admin bearer token, for hypervisors without fw_cfg (visible in the host's process list: janus passes it as the fw_cfg file `opt/janus/token` instead, which wins); without a token the admin listener is off | none |
//! | `janus.port=P` | service listener port inside the guest | manifest port (80) |
//! | `janus.admin_port=P` | admin listener port inside the guest | 81 |
//! | `janus.upstream.NAME=A.B.C.D:PORT` | address of declared upstream `NAME` | none |
//! | `janus.config.KEY=VALUE` | service config override (`%20` = space, `%25` = `%`) | manifest default |
//! | `janus.seed=HEX` | extra entropy from the host (mixed with RDRAND/RDSEED/TSC) | none |
//! | `janus.log=LEVEL` | console log level: error, warn, info, debug, trace | info |
//! | `ip=dhcp` or `ip=A.B.C.D/N` | guest address | `dhcp` |
//! | `gw=A.B.C.D` | default gateway (static addressing) | none |
//! | `virtio_mmio.device=SIZE@ADDR:IRQ` | added by QEMU microvm with `acpi=off` | none |
//!
//! Unknown words are ignored (QEMU and loaders add their own).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};

/// Guest addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpConfig {
    /// DHCPv4.
    Dhcp,
    /// Static address with prefix length and optional gateway.
    Static {
        /// Address.
        addr: Ipv4Addr,
        /// Prefix length (0..=32).
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// A virtio-mmio device announced on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Physical base address.
    pub addr: u64,
    /// Region size.
    pub size: u64,
    /// Interrupt line.
    pub irq: u32,
}

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// Node id.
    pub node_id: String,
    /// Admin bearer token.
    pub admin_token: Option<String>,
    /// Service port override.
    pub port: Option<u16>,
    /// Admin port.
    pub admin_port: u16,
    /// Declared-upstream addresses.
    pub upstreams: Vec<(String, SocketAddrV4)>,
    /// Config overrides.
    pub config: Vec<(String, String)>,
    /// Host-provided seed bytes.
    pub seed: Vec<u8>,
    /// Log level name.
    pub log_level: String,
    /// Addressing.
    pub ip: IpConfig,
    /// virtio-mmio devices named on the command line.
    pub mmio_devices: Vec<MmioDevice>,
}

/// A command-line word that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineError {
    /// The offending word.
    pub word: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad kernel command line word '{}': {}",
            self.word, self.reason
        )
    }
}

fn err(word: &str, reason: &'static str) -> CmdlineError {
    CmdlineError {
        word: word.to_string(),
        reason,
    }
}

/// Decodes `%XX` escapes (so config values can hold spaces).
pub fn unescape(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Encodes a value for the command line (inverse of [`unescape`]): `%`, space and control
/// characters become `%XX`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b == b'%' || b <= b' ' || b == 0x7f || b == b'"' {
            out.push_str(&alloc::format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => {
            let (num, mult) = match s.as_bytes().last() {
                Some(b'K' | b'k') => (&s[..s.len() - 1], 1024),
                Some(b'M' | b'm') => (&s[..s.len() - 1], 1024 * 1024),
                _ => (s, 1),
            };
            num.parse::<u64>().ok()?.checked_mul(mult)
        }
    }
}

fn parse_hex_bytes(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Parses the command line.
pub fn parse(cmdline: &str) -> Result<BootConfig, CmdlineError> {
    let mut cfg = BootConfig {
        node_id: String::from("uk-node"),
        admin_token: None,
        port: None,
        admin_port: 81,
        upstreams: Vec::new(),
        config: Vec::new(),
        seed: Vec::new(),
        log_level: String::from("info"),
        ip: IpConfig::Dhcp,
        mmio_devices: Vec::new(),
    };
    let mut gateway = None;
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "janus.node" => {
                if value.is_empty()
                    || !value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(err(word, "node id must be [A-Za-z0-9._-]+"));
                }
                cfg.node_id = value.to_string();
            }
            "janus.token" => {
                let token = unescape(value).ok_or_else(|| err(word, "bad %-escape"))?;
                if token.is_empty() {
                    return Err(err(word, "empty token"));
                }
                cfg.admin_token = Some(token);
            }
            "janus.port" => {
                cfg.port = Some(
                    value
                        .parse()
                        .map_err(|_| err(word, "port must be 1..65535"))?,
                )
            }
            "janus.admin_port" => {
                cfg.admin_port = value
                    .parse()
                    .map_err(|_| err(word, "port must be 1..65535"))?
            }
            "janus.seed" => {
                cfg.seed = parse_hex_bytes(value).ok_or_else(|| err(word, "seed must be hex"))?
            }
            "janus.log" => {
                if !["error", "warn", "info", "debug", "trace"].contains(&value) {
                    return Err(err(word, "log level must be error|warn|info|debug|trace"));
                }
                cfg.log_level = value.to_string();
            }
            "ip" => {
                cfg.ip = if value == "dhcp" {
                    IpConfig::Dhcp
                } else {
                    let (addr, prefix) = value.split_once('/').unwrap_or((value, "24"));
                    let addr: Ipv4Addr = addr
                        .parse()
                        .map_err(|_| err(word, "expected dhcp or A.B.C.D/N"))?;
                    let prefix: u8 = prefix
                        .parse()
                        .ok()
                        .filter(|p| *p <= 32)
                        .ok_or_else(|| err(word, "prefix must be 0..32"))?;
                    IpConfig::Static {
                        addr,
                        prefix,
                        gateway: None,
                    }
                }
            }
            "gw" => {
                gateway = Some(
                    value
                        .parse::<Ipv4Addr>()
                        .map_err(|_| err(word, "expected A.B.C.D"))?,
                )
            }
            "virtio_mmio.device" => {
                let (size, rest) = value
                    .split_once('@')
                    .ok_or_else(|| err(word, "expected SIZE@ADDR:IRQ"))?;
                let (addr, irq) = rest
                    .split_once(':')
                    .ok_or_else(|| err(word, "expected SIZE@ADDR:IRQ"))?;
                cfg.mmio_devices.push(MmioDevice {
                    size: parse_u64(size).ok_or_else(|| err(word, "bad size"))?,
                    addr: parse_u64(addr).ok_or_else(|| err(word, "bad address"))?,
                    irq: irq.parse().map_err(|_| err(word, "bad irq"))?,
                });
            }
            _ => {
                if let Some(name) = key.strip_prefix("janus.upstream.") {
                    if name.is_empty() {
                        return Err(err(word, "empty upstream name"));
                    }
                    let addr: SocketAddrV4 = value
                        .parse()
                        .map_err(|_| err(word, "expected A.B.C.D:PORT"))?;
                    cfg.upstreams.retain(|(n, _)| n != name);
                    cfg.upstreams.push((name.to_string(), addr));
                } else if let Some(name) = key.strip_prefix("janus.config.") {
                    if name.is_empty() {
                        return Err(err(word, "empty config key"));
                    }
                    let value = unescape(value).ok_or_else(|| err(word, "bad %-escape"))?;
                    cfg.config.retain(|(n, _)| n != name);
                    cfg.config.push((name.to_string(), value));
                } else if key.starts_with("janus.") {
                    return Err(err(word, "unknown janus.* key"));
                }
            }
        }
    }
    if let (IpConfig::Static { gateway: gw, .. }, Some(g)) = (&mut cfg.ip, gateway) {
        *gw = Some(g);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let cfg = parse(
            "console=ttyS0 janus.node=uk-1 janus.token=s3cr%20t janus.upstream.backend=10.0.2.2:8080 \
             janus.config.greeting=Hi%20there ip=10.0.2.15/24 gw=10.0.2.2 janus.seed=00ff10 \
             virtio_mmio.device=512@0xfeb00e00:12 janus.admin_port=8081",
        )
        .expect("parses");
        assert_eq!(cfg.node_id, "uk-1");
        assert_eq!(cfg.admin_token.as_deref(), Some("s3cr t"));
        assert_eq!(
            cfg.upstreams,
            [(
                "backend".to_string(),
                "10.0.2.2:8080".parse().expect("addr")
            )]
        );
        assert_eq!(
            cfg.config,
            [("greeting".to_string(), "Hi there".to_string())]
        );
        assert_eq!(
            cfg.ip,
            IpConfig::Static {
                addr: Ipv4Addr::new(10, 0, 2, 15),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2))
            }
        );
        assert_eq!(cfg.seed, [0x00, 0xff, 0x10]);
        assert_eq!(
            cfg.mmio_devices,
            [MmioDevice {
                addr: 0xfeb00e00,
                size: 512,
                irq: 12
            }]
        );
        assert_eq!(cfg.admin_port, 8081);
    }

    #[test]
    fn defaults() {
        let cfg = parse("").expect("parses");
        assert_eq!(cfg.ip, IpConfig::Dhcp);
        assert_eq!(cfg.node_id, "uk-node");
        assert_eq!(cfg.admin_token, None);
        assert_eq!(cfg.admin_port, 81);
    }

    #[test]
    fn errors_name_the_word() {
        let e = parse("janus.upstream.x=nowhere").expect_err("bad addr");
        assert_eq!(e.word, "janus.upstream.x=nowhere");
        assert!(parse("ip=10.0.0.1/40").is_err());
        assert!(parse("janus.node=a/b").is_err());
        assert!(parse("janus.bogus=1").is_err());
        assert!(parse("janus.seed=abc").is_err());
        assert!(parse("janus.config.k=%zz").is_err());
        assert!(parse("virtio_mmio.device=512@zz:1").is_err());
    }

    #[test]
    fn escape_roundtrip() {
        for s in ["plain", "with space", "100%", "tab\tand\"quote"] {
            let e = escape(s);
            assert!(!e.contains(' '));
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
    }
}
