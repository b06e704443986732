//! An incremental Server-Sent Events reader (the WHATWG event stream format) for the stdio
//! bridge: chunks in, complete events out, each event's size bounded.

/// One complete event: its `data` lines joined by `\n`, and its `id` if it set one.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("an SSE event is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

/// Keeps the unfinished line and event between chunks.
#[derive(Debug)]
pub struct SseReader {
    line: Vec<u8>,
    data: String,
    has_data: bool,
    id: Option<String>,
    /// The previous chunk ended with `\r`: a `\n` first in the next one belongs to it.
    after_cr: bool,
    event_bytes: usize,
    max_event_bytes: usize,
}

impl SseReader {
    pub fn new(max_event_bytes: usize) -> Self {
        SseReader {
            line: Vec::new(),
            data: String::new(),
            has_data: false,
            id: None,
            after_cr: false,
            event_bytes: 0,
            max_event_bytes,
        }
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut events = Vec::new();
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(end) = chunk.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.take(&chunk[..end])?;
            let crlf = chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n');
            if chunk[end] == b'\r' && end + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[end + if crlf { 2 } else { 1 }..];
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.line_done(&line) {
                events.push(event);
            }
        }
        self.take(chunk)?;
        Ok(events)
    }

    fn take(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        self.event_bytes += bytes.len() + 1;
        if self.event_bytes > self.max_event_bytes {
            return Err(EventTooLarge(self.max_event_bytes));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            self.event_bytes = 0;
            let id = self.id.clone();
            if !std::mem::take(&mut self.has_data) {
                self.data.clear();
                return None;
            }
            return Some(SseEvent {
                data: std::mem::take(&mut self.data),
                id,
            });
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_whole_however_the_chunks_fall() {
        let stream = b"id: 7\nevent: message\ndata: {\"a\":\ndata: 1}\n\n: comment\n\n\
                       data: two\r\n\r\ndata:x\r\rdata: y\n\n";
        for split in 0..stream.len() {
            let mut reader = SseReader::new(1 << 20);
            let mut events = reader.feed(&stream[..split]).unwrap();
            events.extend(reader.feed(&stream[split..]).unwrap());
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["{\"a\":\n1}", "two", "x", "y"], "split at {split}");
            assert_eq!(events[0].id.as_deref(), Some("7"));
        }
    }

    #[test]
    fn an_event_over_the_bound_is_refused() {
        let mut reader = SseReader::new(16);
        assert!(reader.feed(b"data: 12345\n\n").is_ok());
        assert_eq!(reader.feed(b"data: 1234567890"), Err(EventTooLarge(16)));
    }
}
