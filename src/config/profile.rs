//! SIP profiles: one TOML file per trunk in the profiles directory.
//!
//! The files are the source of truth for trunks; the API only reads them.
//! Secrets are never in the files: `password_env` names the environment
//! variable that holds the password, and it is read here, once, so a missing
//! secret is a start-up error rather than a failing registration at 3 a.m.

use std::collections::BTreeMap;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{ConfigError, is_hostname};

/// One trunk as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub registration: Option<RegistrationConfig>,
    #[serde(default)]
    pub inbound: Inbound,
    #[serde(default)]
    pub outbound: Option<Outbound>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub media: Media,
    /// How requests to the trunk's registrar and proxy travel: `udp` (the
    /// default), `tcp` or `tls` (port 5061 when none is given).
    #[serde(default)]
    pub transport: TrunkTransport,
    /// PEM file of CA certificates trusted for this trunk's TLS server
    /// certificate, beside the system roots.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Verify the trunk's TLS server certificate (chain and name). `false`
    /// must be set explicitly, and is logged loudly at every load.
    #[serde(default = "default_true")]
    pub tls_verify: bool,
}

fn default_true() -> bool {
    true
}

/// The transport of a trunk's outbound requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// `host[:port]` of the registrar.
    pub registrar: String,
    pub username: String,
    /// Digest user when it differs from `username`.
    #[serde(default)]
    pub auth_username: Option<String>,
    /// Name of the environment variable that holds the password.
    pub password_env: String,
    /// The password read from `password_env` at load time; never serialized
    /// nor printed (`Debug` shows `Secret(***)`).
    #[serde(skip)]
    pub password: crate::secrets::Secret,
    /// Domain of the AOR; defaults to the registrar's host.
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "default_expires")]
    pub expires: u32,
}

fn default_expires() -> u32 {
    3600
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    /// Source networks allowed to send calls to this trunk.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Digest credentials that a peer outside `allow` (a PBX or softphone
    /// on an address we cannot know) must prove before its INVITE is
    /// taken (RFC 3261 §22.4).
    #[serde(default)]
    pub auth: Option<InboundAuth>,
}

/// `[inbound] auth`: what a caller must authenticate with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundAuth {
    /// Digest username the peer must send.
    pub username: String,
    /// Name of the environment variable that holds the password.
    pub password_env: String,
    /// The password read from `password_env` at load time; never serialized
    /// nor printed (`Debug` shows `Secret(***)`).
    #[serde(skip)]
    pub password: crate::secrets::Secret,
    /// Realm of the challenge; defaults to the trunk's name.
    #[serde(default)]
    pub realm: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// `host[:port]` that outbound INVITEs are sent to.
    pub proxy: String,
    /// E.164 number presented when a call does not say otherwise.
    #[serde(default)]
    pub caller_id: Option<String>,
    /// Send OPTIONS to the proxy this often and show the trunk up or down;
    /// `None` sends none.
    #[serde(default)]
    pub ping_seconds: Option<u32>,
    /// Toll fraud: the only destinations calls through this trunk may go to
    /// (E.164 prefixes such as `"+1"`, `"+4420"`). Empty: every destination
    /// not denied.
    #[serde(default)]
    pub allow_destinations: Vec<String>,
    /// Destinations refused unless an allowed prefix at least as long
    /// covers them. Default: [`DEFAULT_DENIED_DESTINATIONS`] (premium-rate
    /// and the international ranges most abused for revenue-share fraud);
    /// `[]` denies nothing.
    #[serde(default = "default_denied")]
    pub deny_destinations: Vec<String>,
    /// Trunk failover: the final responses to an INVITE through this trunk
    /// that move the call on to the next trunk it names (300 to 699).
    /// Default: 408 and every 5xx (RFC 3261 §21.5: a server, not the
    /// callee, failed); busy, declined and 6xx are the callee's answer,
    /// the same on any trunk, unless listed here. No answer at all (a
    /// transaction timeout or a transport error) always fails over.
    #[serde(default)]
    pub failover_on: Option<Vec<u16>>,
    /// Trunk failover: the trunks (profile names, with `[outbound]`) a call
    /// through this trunk goes on to, in order, when it names no trunks of
    /// its own (`trunk_ids`). Names without `[outbound]` are skipped.
    #[serde(default)]
    pub failover_to: Vec<String>,
}

/// The destination prefixes a trunk refuses unless the operator allows
/// them: premium-rate and shared-cost services, and the international
/// ranges toll fraud (IRSF) pays out through.
pub const DEFAULT_DENIED_DESTINATIONS: &[&str] = &[
    // North America: 900 and 976 premium-rate services.
    "+1900", "+1976",
    // United Kingdom: 09 premium rate, 070 personal numbers, 087 and 084
    // revenue share.
    "+449", "+4470", "+4487", "+4484",
    // Germany 0900, France 089x, Italy 899, Spain 803/806/807, Australia
    // 1900: premium rate.
    "+49900", "+3389", "+39899", "+34803", "+34806", "+34807", "+611900",
    // International networks and services: satellite (Inmarsat, Iridium,
    // Thuraya), international networks, premium rate, shared cost, UPT.
    "+870", "+881", "+882", "+883", "+979", "+808", "+878",
    // Small territories whose ranges are the usual IRSF destinations.
    "+247", "+290", "+682", "+683", "+690", "+691", "+692",
];

fn default_denied() -> Vec<String> {
    DEFAULT_DENIED_DESTINATIONS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

impl Outbound {
    /// Whether the final response `code` to an INVITE through this trunk
    /// moves the call to its next trunk.
    pub fn fails_over_on(&self, code: u16) -> bool {
        match &self.failover_on {
            Some(codes) => codes.contains(&code),
            None => code == 408 || (500..600).contains(&code),
        }
    }

    /// Whether a call to `to` (E.164) may go through this trunk: not under
    /// a denied prefix unless an allowed prefix at least as long covers
    /// it, and under an allowed prefix when the trunk lists any.
    pub fn destination_allowed(&self, to: &str) -> Result<(), String> {
        let longest = |list: &[String]| {
            list.iter()
                .filter(|p| to.starts_with(p.as_str()))
                .map(String::len)
                .max()
        };
        let allowed = longest(&self.allow_destinations);
        if !self.allow_destinations.is_empty() && allowed.is_none() {
            return Err("the trunk's allow_destinations do not include it".into());
        }
        match (longest(&self.deny_destinations), allowed) {
            (Some(d), a) if a.is_none_or(|a| a < d) => {
                Err("it is in the trunk's deny_destinations (premium-rate or high-risk)".into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_calls")]
    pub max_calls: u32,
    #[serde(default = "default_cps")]
    pub cps: u32,
    /// Toll fraud: outbound calls placed through the trunk per UTC day;
    /// past it calls are refused (429) and `trunk.cap_reached` is sent.
    #[serde(default)]
    pub daily_calls: Option<u32>,
    /// Minutes of ended outbound calls per UTC day, likewise.
    #[serde(default)]
    pub daily_minutes: Option<u32>,
}

fn default_max_calls() -> u32 {
    100
}

fn default_cps() -> u32 {
    10
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_calls: default_max_calls(),
            cps: default_cps(),
            daily_calls: None,
            daily_minutes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Media {
    #[serde(default = "default_codecs")]
    pub codecs: Vec<Codec>,
    /// SRTP with SDES keys (RFC 4568) on the trunk's calls, both ways.
    #[serde(default)]
    pub srtp: Srtp,
}

/// A trunk's SRTP policy (`[media] srtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Srtp {
    /// Plain RTP only; an RTP/SAVP offer is refused with 488.
    #[default]
    Off,
    /// SRTP when the far end offers or accepts `a=crypto`, plain otherwise.
    Optional,
    /// SRTP only: a plain offer or answer is refused with 488.
    Mandatory,
}

fn default_codecs() -> Vec<Codec> {
    vec![Codec::Pcmu, Codec::Pcma]
}

impl Default for Media {
    fn default() -> Self {
        Self {
            codecs: default_codecs(),
            srtp: Srtp::Off,
        }
    }
}

/// Audio codecs agentline speaks on a trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Codec {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
    /// G.722 (RFC 3551 §4.5.2).
    #[serde(rename = "G722")]
    G722,
    /// Opus (RFC 7587); `opus`, as it is written in SDP, is accepted too.
    #[serde(rename = "OPUS", alias = "opus")]
    Opus,
}

impl Profile {
    /// Whether a transfer (REFER) to `to` may go out through this trunk:
    /// its `[outbound]` destination policy, or with none the default
    /// denied ranges, since the carrier bills the transferred leg too.
    pub fn transfer_allowed(&self, to: &str) -> Result<(), String> {
        match &self.outbound {
            Some(out) => out.destination_allowed(to),
            None => Outbound {
                proxy: String::new(),
                caller_id: None,
                ping_seconds: None,
                allow_destinations: Vec::new(),
                deny_destinations: default_denied(),
                failover_on: None,
                failover_to: Vec::new(),
            }
            .destination_allowed(to),
        }
    }

    /// The API id of the trunk: stable across restarts because it derives from
    /// the profile name, which is unique.
    pub fn id(&self) -> String {
        format!("trk_{}", self.name)
    }

    /// The URI requests to `host_port` (the registrar or the proxy) go to
    /// over the trunk's transport: `host[:port]` for UDP, a `sip:` URI with
    /// `;transport=tcp|tls` otherwise (RFC 3261 §19.1.1); TLS without a
    /// port gets 5061 (§26.2.2: a `sip:` URI would otherwise mean 5060).
    pub fn sip_target(&self, host_port: &str) -> String {
        match self.transport {
            TrunkTransport::Udp => host_port.to_owned(),
            TrunkTransport::Tcp => format!("sip:{host_port};transport=tcp"),
            TrunkTransport::Tls => {
                let (host, port) = split_host_port(host_port);
                let port = port.unwrap_or("5061");
                format!("sip:{host}:{port};transport=tls")
            }
        }
    }

    /// The TLS server names of this trunk (its registrar's and proxy's
    /// hosts, IPs without brackets), which its verification applies to.
    pub fn tls_hosts(&self) -> Vec<String> {
        let registrar = self.registration.as_ref().map(|r| r.registrar.as_str());
        let proxy = self.outbound.as_ref().map(|o| o.proxy.as_str());
        registrar
            .into_iter()
            .chain(proxy)
            .map(|hp| {
                split_host_port(hp)
                    .0
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase()
            })
            .collect()
    }

    fn validate(&mut self, file: &str) -> Result<(), ConfigError> {
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Err(ConfigError::new(
                file,
                "name",
                "must be 1 to 64 letters, digits, '-' or '_'",
            ));
        }
        if let Some(reg) = &mut self.registration {
            check_host_port(file, "registration.registrar", &reg.registrar)?;
            if reg.username.is_empty() {
                return Err(ConfigError::new(
                    file,
                    "registration.username",
                    "must not be empty",
                ));
            }
            if !(60..=86_400).contains(&reg.expires) {
                return Err(ConfigError::new(
                    file,
                    "registration.expires",
                    "must be between 60 and 86400 seconds",
                ));
            }
            reg.password = std::env::var(&reg.password_env)
                .map(crate::secrets::Secret::new)
                .map_err(|_| {
                    ConfigError::new(
                        file,
                        "registration.password_env",
                        format!("environment variable {} is not set", reg.password_env),
                    )
                })?;
        }
        if let Some(auth) = &mut self.inbound.auth {
            if auth.username.is_empty() || auth.username.contains(['"', '\\']) {
                return Err(ConfigError::new(
                    file,
                    "inbound.auth.username",
                    "must be non-empty, without quotes or backslashes",
                ));
            }
            let realm = auth.realm.get_or_insert_with(|| self.name.clone());
            if realm.is_empty() || realm.contains(['"', '\\']) {
                return Err(ConfigError::new(
                    file,
                    "inbound.auth.realm",
                    "must be non-empty, without quotes or backslashes",
                ));
            }
            auth.password = std::env::var(&auth.password_env)
                .ok()
                .filter(|p| !p.is_empty())
                .map(crate::secrets::Secret::new)
                .ok_or_else(|| {
                    ConfigError::new(
                        file,
                        "inbound.auth.password_env",
                        format!("environment variable {} is not set", auth.password_env),
                    )
                })?;
        }
        if let Some(out) = &self.outbound {
            check_host_port(file, "outbound.proxy", &out.proxy)?;
            if let Some(cid) = &out.caller_id
                && crate::e164::normalize(cid).is_err()
            {
                return Err(ConfigError::new(
                    file,
                    "outbound.caller_id",
                    format!("{cid:?} is not an E.164 number"),
                ));
            }
            if let Some(ping) = out.ping_seconds
                && !(1..=3600).contains(&ping)
            {
                return Err(ConfigError::new(
                    file,
                    "outbound.ping_seconds",
                    "must be between 1 and 3600 seconds",
                ));
            }
            if let Some(bad) = out
                .failover_on
                .iter()
                .flatten()
                .find(|c| !(300..=699).contains(*c))
            {
                return Err(ConfigError::new(
                    file,
                    "outbound.failover_on",
                    format!("{bad} is not a final failure response (300 to 699)"),
                ));
            }
            for (key, list) in [
                ("outbound.allow_destinations", &out.allow_destinations),
                ("outbound.deny_destinations", &out.deny_destinations),
            ] {
                if let Some(bad) = list.iter().find(|p| {
                    !(p.len() >= 2
                        && p.len() <= 16
                        && p.starts_with('+')
                        && p[1..].bytes().all(|b| b.is_ascii_digit()))
                }) {
                    return Err(ConfigError::new(
                        file,
                        key,
                        format!("{bad:?} is not an E.164 prefix (+ and digits)"),
                    ));
                }
            }
        }
        if self.limits.max_calls == 0 {
            return Err(ConfigError::new(
                file,
                "limits.max_calls",
                "must be at least 1",
            ));
        }
        if self.limits.daily_calls == Some(0) || self.limits.daily_minutes == Some(0) {
            return Err(ConfigError::new(
                file,
                "limits.daily_calls",
                "daily caps must be at least 1 (leave them out for none)",
            ));
        }
        if self.limits.cps == 0 {
            return Err(ConfigError::new(file, "limits.cps", "must be at least 1"));
        }
        if let Some(ca) = &self.tls_ca_file {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    ConfigError::new(file, "tls_ca_file", format!("{}: {e}", ca.display()))
                })?;
            if certs.is_empty() {
                return Err(ConfigError::new(
                    file,
                    "tls_ca_file",
                    format!("{}: no PEM certificate in it", ca.display()),
                ));
            }
        }
        if !self.tls_verify {
            tracing::warn!(
                trunk = %self.name,
                "tls_verify = false: this trunk's TLS server certificate is NOT verified; anyone on the path can impersonate it"
            );
        }
        if self.media.codecs.is_empty() {
            return Err(ConfigError::new(
                file,
                "media.codecs",
                "must name at least one codec",
            ));
        }
        Ok(())
    }
}

/// `host[:port]` split (an IPv6 host keeps its brackets).
fn split_host_port(value: &str) -> (&str, Option<&str>) {
    match value.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (value, None),
    }
}

fn check_host_port(file: &str, key: &str, value: &str) -> Result<(), ConfigError> {
    let (host, port) = split_host_port(value);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p != 0));
    let host_ok = host.parse::<std::net::IpAddr>().is_ok() || is_hostname(host);
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            file,
            key,
            format!("expected host[:port], found {value:?}"),
        ))
    }
}

/// Every profile, keyed by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profiles {
    pub by_name: BTreeMap<String, Profile>,
}

impl Profiles {
    /// Reads every `*.toml` in `dir`. A missing directory means no trunks; any
    /// unreadable or invalid file refuses the whole set, so a typo never
    /// silently drops a trunk.
    pub fn load_dir(dir: &Path) -> Result<Self, ConfigError> {
        let mut by_name = BTreeMap::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(ConfigError::new(
                    dir.display().to_string(),
                    "profiles.dir",
                    format!("cannot read directory: {e}"),
                ));
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        paths.sort();
        for path in paths {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| ConfigError::new(&file, "-", format!("cannot read: {e}")))?;
            let profile = Profile::parse(&file, &text)?;
            if by_name.contains_key(&profile.name) {
                return Err(ConfigError::new(
                    &file,
                    "name",
                    format!("trunk {:?} is defined twice", profile.name),
                ));
            }
            by_name.insert(profile.name.clone(), profile);
        }
        Ok(Self { by_name })
    }

    pub fn get_by_id(&self, id: &str) -> Option<&Profile> {
        self.by_name.get(id.strip_prefix("trk_")?)
    }
}

impl Profile {
    /// Parses and validates one profile file's text.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let mut profile: Profile = toml::from_str(text).map_err(|e| {
            let key = toml_key(text, &e);
            ConfigError::new(file, key, e.message().to_string())
        })?;
        profile.validate(file)?;
        Ok(profile)
    }
}

/// Best-effort dotted key of a TOML error: the table header above the error
/// and the key on its line.
fn toml_key(text: &str, err: &toml::de::Error) -> String {
    let Some(span) = err.span() else {
        return "-".into();
    };
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match (table, key.is_empty() || key.starts_with('[')) {
        (_, true) => table.unwrap_or("-").to_string(),
        (Some(t), false) => format!("{t}.{key}"),
        (None, false) => key.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_follow_the_longest_prefix() {
        let mut out = Outbound {
            proxy: "carrier.example:5060".into(),
            caller_id: None,
            ping_seconds: None,
            allow_destinations: Vec::new(),
            deny_destinations: default_denied(),
            failover_on: None,
            failover_to: Vec::new(),
        };
        assert!(out.destination_allowed("+14155550100").is_ok());
        assert!(out.destination_allowed("+19005550199").is_err());
        assert!(out.destination_allowed("+882345678").is_err());
        assert!(out.destination_allowed("+442079460958").is_ok());
        assert!(out.destination_allowed("+449012345678").is_err());
        // An allowed prefix at least as long as the denied one wins.
        out.allow_destinations = vec!["+1900555".into(), "+1".into()];
        assert!(out.destination_allowed("+19005550199").is_ok());
        assert!(out.destination_allowed("+19001110000").is_err());
        assert!(
            out.destination_allowed("+442079460958").is_err(),
            "not in the allow list"
        );
        out.allow_destinations.clear();
        out.deny_destinations.clear();
        assert!(out.destination_allowed("+19005550199").is_ok());
    }

    const GOOD: &str = r#"
name = "carrier-a"
[inbound]
allow = ["203.0.113.0/24"]
[outbound]
proxy = "sip.carrier-a.example:5060"
caller_id = "+14155550100"
[limits]
max_calls = 100
cps = 10
[media]
codecs = ["PCMU", "PCMA"]
"#;

    #[test]
    fn a_good_profile_parses() {
        let p = Profile::parse("a.toml", GOOD).unwrap();
        assert_eq!(p.id(), "trk_carrier-a");
        assert_eq!(p.inbound.allow.len(), 1);
        assert_eq!(p.media.codecs, vec![Codec::Pcmu, Codec::Pcma]);
        assert_eq!(p.media.srtp, Srtp::Off);
        let secure = Profile::parse("a.toml", &format!("{GOOD}srtp = \"mandatory\"\n")).unwrap();
        assert_eq!(secure.media.srtp, Srtp::Mandatory);
        let wrong = Profile::parse("a.toml", &format!("{GOOD}srtp = \"yes\"\n"));
        assert!(wrong.is_err());
    }

    #[test]
    fn inbound_auth_reads_its_password_and_defaults_the_realm() {
        // PATH is set wherever the tests run; no test changes the environment.
        let text = GOOD.replace(
            "[outbound]",
            "auth = { username = \"pbx\", password_env = \"PATH\" }\n[outbound]",
        );
        let p = Profile::parse("a.toml", &text).unwrap();
        let auth = p.inbound.auth.expect("auth");
        assert_eq!(auth.username, "pbx");
        assert_eq!(auth.realm.as_deref(), Some("carrier-a"));
        assert_eq!(auth.password.expose(), std::env::var("PATH").unwrap());
        assert!(!format!("{auth:?}").contains(&std::env::var("PATH").unwrap()));

        let text = GOOD.replace(
            "[outbound]",
            "auth = { username = \"pbx\", password_env = \"AGENTLINE_UNSET_4f1c\" }\n[outbound]",
        );
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "inbound.auth.password_env", "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let text = GOOD.replace("max_calls = 100", "max_calls = \"lots\"");
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "limits.max_calls", "{e}");
    }

    #[test]
    fn an_unknown_codec_names_the_key() {
        let text = GOOD.replace("\"PCMA\"]", "\"G729\"]");
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "media.codecs", "{e}");
    }

    #[test]
    fn a_bad_network_names_the_key() {
        let text = GOOD.replace("203.0.113.0/24", "203.0.113.0/99");
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "inbound.allow", "{e}");
    }

    #[test]
    fn a_missing_password_variable_is_refused() {
        let text = format!(
            "{GOOD}\n[registration]\nregistrar = \"reg.example:5060\"\nusername = \"1001\"\npassword_env = \"AGENTLINE_TEST_SURELY_UNSET\"\n"
        );
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "registration.password_env", "{e}");
    }

    #[test]
    fn a_bad_proxy_is_refused() {
        let text = GOOD.replace("sip.carrier-a.example:5060", "sip carrier:99999");
        let e = Profile::parse("a.toml", &text).unwrap_err();
        assert_eq!(e.key, "outbound.proxy", "{e}");
    }

    #[test]
    fn a_ping_interval_out_of_range_is_refused() {
        let with =
            |ping: &str| GOOD.replace("[limits]", &format!("ping_seconds = {ping}\n[limits]"));
        let p = Profile::parse("a.toml", &with("30")).unwrap();
        assert_eq!(p.outbound.unwrap().ping_seconds, Some(30));
        for bad in ["0", "3601"] {
            let e = Profile::parse("a.toml", &with(bad)).unwrap_err();
            assert_eq!(e.key, "outbound.ping_seconds", "{e}");
        }
    }
}
