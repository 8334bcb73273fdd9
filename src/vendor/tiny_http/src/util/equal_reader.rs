use std::io::Read;
use std::io::Result as IoResult;
use std::sync::mpsc::channel;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use crate::limits::BodyState;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached
/// when the destructor is called, the remaining bytes will be read and
/// thrown away, through a small buffer; or, with a `BodyState`, left for the
/// connection's thread, which knows its limits and deadlines, to skip.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: usize,
    last_read_signal: Sender<IoResult<()>>,
    state: Option<Arc<BodyState>>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub fn new(reader: R, size: usize) -> (EqualReader<R>, Receiver<IoResult<()>>) {
        let (tx, rx) = channel();

        let r = EqualReader {
            reader,
            size,
            last_read_signal: tx,
            state: None,
        };

        (r, rx)
    }

    /// Leaves the unread rest of the body to the connection's thread: on drop, the
    /// count of unread bytes goes to `state` and nothing is read.
    pub(crate) fn with_state(mut self, state: Arc<BodyState>) -> Self {
        self.state = Some(state);
        self
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }

        let buf = if buf.len() < self.size {
            buf
        } else {
            &mut buf[..self.size]
        };

        match self.reader.read(buf) {
            Ok(len) => {
                self.size -= len;
                Ok(len)
            }
            err @ Err(_) => err,
        }
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            state.set(self.size);
            return;
        }

        let mut remaining_to_read = self.size;
        // The size comes from the client's Content-Length: allocating it aborts the
        // process when it is absurd (tiny-http issue #252).
        let mut buf = [0u8; 8192];

        while remaining_to_read > 0 {
            let want = remaining_to_read.min(buf.len());

            match self.reader.read(&mut buf[..want]) {
                Err(e) => {
                    self.last_read_signal.send(Err(e)).ok();
                    break;
                }
                Ok(0) => {
                    self.last_read_signal.send(Ok(())).ok();
                    break;
                }
                Ok(other) => {
                    remaining_to_read -= other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;

    #[test]
    fn test_absurd_size_is_drained_without_allocating_it() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new(b"body".to_vec());
        let (reader, _) = EqualReader::new(org_reader.by_ref(), usize::MAX / 2);
        drop(reader);
        assert_eq!(org_reader.position(), 4);
    }

    #[test]
    fn test_with_state_leaves_the_rest_unread() {
        use crate::limits::BodyState;
        use std::io::Cursor;

        let state = BodyState::new(0);
        let mut org_reader = Cursor::new(b"hello world".to_vec());
        {
            let (reader, _) = EqualReader::new(org_reader.by_ref(), 1_000_000_000_000);
            let mut reader = reader.with_state(state.clone());
            let mut buf = [0u8; 5];
            reader.read_exact(&mut buf).unwrap();
        }
        assert_eq!(state.unread(), 1_000_000_000_000 - 5);
        assert_eq!(org_reader.position(), 5);
    }

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let (mut equal_reader, _) = EqualReader::new(org_reader.by_ref(), 5);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
