//! `GET /v1/projects/P/locations/L/registries/R/logs` (admin): a registry's device activity
//! logs, in Cloud Logging's `entries.list` shape: `{"entries": [LogEntry...], "nextPageToken"}`.
//!
//! Entries come oldest first (so a reader can follow the log with the page token). Query
//! parameters: `deviceId`, `minSeverity` (DEBUG, INFO, ERROR; Cloud Logging's other names
//! select the next one up), `eventType`, `startTime` (RFC 3339), `pageSize` (default 100, at most
//! 1000) and `pageToken`. `nextPageToken` is present whenever the page has entries: passing it
//! back returns what was logged since, so a page without one is the end for now. Ferrocore adds
//! `droppedEntries`: the entries this server dropped since it started, by severity, because its
//! buffer was full or the store failed.

use super::{Query, json_response, route};
use axum::response::Response;
use ferrocore_core::device_log::{DeviceLogQuery, EventType, LogSeverity, entry_json};
use ferrocore_core::{Core, Error, paging};
use ferrocore_model::{DeviceId, RegistryName, Timestamp, ids::printable};
use serde_json::json;

const PAGE_KIND: &str = "device-logs";
/// Cloud Logging's largest page of entries.
const MAX_PAGE_SIZE: u32 = 1000;

/// The registry of a logs path (everything after `/v1/`), or None for any other path.
pub(crate) fn parse(path: &str) -> Option<Result<RegistryName, Error>> {
    let segs: Vec<&str> = path.split('/').collect();
    if segs.len() != 7 || segs[0] != "projects" || segs[2] != "locations" || segs[4] != "registries" {
        return None;
    }
    if segs[6] != "logs" {
        return None;
    }
    let decoded = match segs[..6].iter().map(|s| route::decode(s)).collect::<Result<Vec<_>, _>>() {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    Some(RegistryName::parse_field("parent", &decoded.join("/")).map_err(Error::from))
}

fn invalid_token() -> Error {
    Error::invalid("page_token", "The page token is invalid; pass the nextPageToken of a previous response.")
}

fn query(registry: RegistryName, q: &Query) -> Result<DeviceLogQuery, Error> {
    q.check(&["deviceId", "minSeverity", "eventType", "startTime", "pageSize", "pageToken"])?;
    let limit = paging::page_size_up_to(i64::from(q.int32("pageSize")?), MAX_PAGE_SIZE)?;
    let after = match paging::decode(PAGE_KIND, q.one("pageToken").unwrap_or_default())? {
        None => None,
        Some(seq) => Some(seq.parse::<u64>().map_err(|_| invalid_token())?),
    };
    let device_id = match q.one("deviceId") {
        None | Some("") => None,
        Some(d) => Some(DeviceId::parse_field("device_id", d)?),
    };
    let min_severity = match q.one("minSeverity") {
        None | Some("") => None,
        Some(s) => Some(LogSeverity::parse_min(s).ok_or_else(|| {
            Error::invalid(
                "min_severity",
                format!("Invalid value '{}' for 'minSeverity': use DEBUG, INFO or ERROR.", printable(s)),
            )
        })?),
    };
    let event_type = match q.one("eventType") {
        None | Some("") => None,
        Some(t) => {
            let known = EventType::parse(t).ok_or_else(|| {
                let names: Vec<&str> = EventType::ALL.iter().map(|e| e.name()).collect();
                Error::invalid(
                    "event_type",
                    format!("Invalid value '{}' for 'eventType': use one of {}.", printable(t), names.join(", ")),
                )
            })?;
            Some(known.name().to_owned())
        }
    };
    let start_time = match q.one("startTime") {
        None | Some("") => None,
        Some(t) => Some(Timestamp::parse(t).ok_or_else(|| {
            Error::invalid(
                "start_time",
                format!("Invalid value '{}' for 'startTime': expected an RFC 3339 time.", printable(t)),
            )
        })?),
    };
    Ok(DeviceLogQuery { registry, device_id, min_severity, event_type, start_time, after, limit })
}

pub(crate) async fn serve(core: &Core, registry: RegistryName, q: &Query) -> Result<Response, Error> {
    let query = query(registry, q)?;
    let entries = core.read_device_logs(&query).await?;
    let dropped = core.device_log().dropped();
    let mut body = json!({
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "droppedEntries": {
            "DEBUG": dropped.debug.to_string(),
            "INFO": dropped.info.to_string(),
            "ERROR": dropped.error.to_string(),
        },
    });
    if let Some(last) = entries.last() {
        body["nextPageToken"] = paging::encode(PAGE_KIND, &last.seq.to_string()).into();
    }
    Ok(json_response(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let r = parse("projects/p/locations/l/registries/reg/logs").unwrap().unwrap();
        assert_eq!(r.to_string(), "projects/p/locations/l/registries/reg");
        assert!(parse("projects/p/locations/l/registries/reg/devices").is_none());
        assert!(parse("projects/p/locations/l/registries/reg").is_none());
        assert!(parse("projects/p/locations/l/registries/1bad/logs").unwrap().is_err());
    }

    #[test]
    fn queries_are_checked() {
        let reg = parse("projects/p/locations/l/registries/reg/logs").unwrap().unwrap();
        let q = |s: &str| query(reg.clone(), &Query::parse(Some(s)));
        let ok = q("deviceId=dev-1&minSeverity=info&eventType=connect&startTime=2026-01-01T00:00:00Z&pageSize=5000")
            .unwrap();
        assert_eq!(ok.limit, MAX_PAGE_SIZE);
        assert_eq!(ok.min_severity, Some(LogSeverity::Info));
        assert_eq!(ok.event_type.as_deref(), Some("CONNECT"));
        assert_eq!(q("").unwrap().limit, ferrocore_model::limits::DEFAULT_PAGE_SIZE);
        for bad in [
            "pageToken=garbage!",
            "pageToken=ZGV2aWNlczpkZXYtMQ",
            "minSeverity=LOUD",
            "eventType=NOPE",
            "startTime=yesterday",
            "pageSize=-1",
            "pageSize=x",
            "deviceId=1bad",
            "filter=x",
        ] {
            assert_eq!(q(bad).unwrap_err().code, ferrocore_core::Code::InvalidArgument, "{bad}");
        }
        let token = paging::encode(PAGE_KIND, "42");
        assert_eq!(q(&format!("pageToken={token}")).unwrap().after, Some(42));
        let not_a_number = paging::encode(PAGE_KIND, "x");
        assert!(q(&format!("pageToken={not_a_number}")).is_err());
    }
}
