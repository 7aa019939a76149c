//! MQTT 5 PUBLISH properties of a profile's messages (`[profiles.X.mqtt5]`), encoded once
//! per device, not per message: the Content Type (the profile's content type), Payload Format
//! Indicator, Message Expiry Interval and the User Properties, whose values are templates over
//! the device's id, type and labels. The session adds the topic alias per connection.

use super::session::{Props, props};
use crate::sim::profile::Mqtt5;
use bytes::{Bytes, BytesMut};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// One MQTT 5 sink's property blocks: one per profile when no user property depends on the
/// device, else one per device, made on the device's first message.
#[derive(Default)]
pub struct PropsCache {
    /// By (profile, device hash); the hash is 0 for a profile whose block is the same for all.
    blocks: RefCell<HashMap<(u16, u64), Bytes>>,
}

/// Who a block is for.
pub struct Device<'a> {
    pub profile: u16,
    pub hash: u64,
    pub id: &'a str,
    pub device_type: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

impl PropsCache {
    /// Forgets the blocks of profile index `profile` (taken by a new runtime profile).
    pub fn forget(&self, profile: usize) {
        self.blocks.borrow_mut().retain(|k, _| k.0 as usize != profile);
    }

    /// The properties of a message of `d` under `m`, with its format's content type.
    pub fn get(&self, m: &Mqtt5, content_type: &str, d: &Device<'_>) -> Props {
        let key = (d.profile, if m.per_device() { d.hash } else { 0 });
        if let Some(b) = self.blocks.borrow().get(&key) {
            return Props { block: b.clone(), alias: m.topic_alias };
        }
        let block = encode(m, content_type, d);
        self.blocks.borrow_mut().insert(key, block.clone());
        Props { block, alias: m.topic_alias }
    }
}

/// The property block of one device.
pub fn encode(m: &Mqtt5, content_type: &str, d: &Device<'_>) -> Bytes {
    let mut out = BytesMut::new();
    if m.payload_format_indicator {
        props::payload_format_indicator(&mut out, 1);
    }
    if let Some(s) = m.message_expiry_s {
        props::message_expiry(&mut out, s);
    }
    if !content_type.is_empty() {
        props::content_type(&mut out, content_type);
    }
    let mut value = vec![];
    for (k, t) in &m.user_properties {
        value.clear();
        t.render(&mut value, d.id, d.device_type, d.labels);
        props::user_property(&mut out, k, &String::from_utf8_lossy(&value));
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::profile::TopicTemplate;
    use rumqttc::v5::mqttbytes::v5;

    #[test]
    fn blocks_decode_as_the_codec_reads_them_and_are_made_once_per_device() {
        let m = Mqtt5 {
            user_properties: vec![
                ("fw".into(), TopicTemplate::parse("1.4.2").unwrap()),
                ("site".into(), TopicTemplate::parse("{labels.site}/{device_id}").unwrap()),
            ],
            message_expiry_s: Some(600),
            topic_alias: true,
            payload_format_indicator: true,
        };
        let labels: BTreeMap<String, String> = [("site".to_string(), "north".to_string())].into();
        let cache = PropsCache::default();
        let d = |id: &'static str, hash| Device {
            profile: 0,
            hash,
            id,
            device_type: "thermo",
            labels: &labels,
        };
        let a = cache.get(&m, "application/json", &d("dev-1", 1));
        assert!(a.alias);
        let again = cache.get(&m, "application/json", &d("dev-1", 1));
        assert_eq!(a.block.as_ptr(), again.block.as_ptr(), "made once per device");
        let b = cache.get(&m, "application/json", &d("dev-2", 2));
        // Decode a PUBLISH carrying the block with the codec.
        let mut out = BytesMut::new();
        let mut props = a.block.to_vec();
        let mut body = BytesMut::new();
        body.extend_from_slice(&[0, 1, b't']);
        let mut len = vec![];
        let n = props.len();
        assert!(n < 128);
        len.push(n as u8);
        body.extend_from_slice(&len);
        body.extend_from_slice(&props);
        body.extend_from_slice(b"{}");
        out.extend_from_slice(&[0x30, body.len() as u8]);
        out.extend_from_slice(&body);
        let Ok(v5::Packet::Publish(p)) = v5::Packet::read(&mut out, None) else {
            panic!("not a PUBLISH")
        };
        let pp = p.properties.expect("properties");
        assert_eq!(pp.payload_format_indicator, Some(1));
        assert_eq!(pp.message_expiry_interval, Some(600));
        assert_eq!(pp.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            pp.user_properties,
            vec![("fw".into(), "1.4.2".into()), ("site".into(), "north/dev-1".into())]
        );
        props.clear();
        assert!(b.block.ends_with(b"north/dev-2"));
    }
}
