//! Weight buffers that are either the process's own memory or a view into a read-only file
//! mapping (the weights cache, `engine::cache`). The kernels read both through `Deref`, so a
//! weight used in place from the page cache costs no private memory and is shared by every
//! process that maps the same file.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use half::f16;
use memmap2::Mmap;

/// Element types a mapping may be viewed as: plain numbers for which every bit pattern is a
/// value, so reading any bytes of the file as them is sound.
pub trait Plain: Copy + Send + Sync + 'static {}
impl Plain for f32 {}
impl Plain for f16 {}
impl Plain for i8 {}

/// `len` values of `T` at byte `offset` of a mapping, checked in bounds and aligned once, when
/// made.
pub struct MapSlice<T> {
    map: Arc<Mmap>,
    offset: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for MapSlice<T> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            offset: self.offset,
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Plain> MapSlice<T> {
    /// `None` when the values would run past the mapping or be misaligned for `T`.
    pub fn new(map: Arc<Mmap>, offset: usize, len: usize) -> Option<Self> {
        let end = len
            .checked_mul(size_of::<T>())
            .and_then(|bytes| offset.checked_add(bytes))?;
        let aligned = (map.as_ptr() as usize)
            .wrapping_add(offset)
            .is_multiple_of(align_of::<T>());
        (end <= map.len() && aligned).then_some(Self {
            map,
            offset,
            len,
            _t: PhantomData,
        })
    }

    fn end(&self) -> usize {
        self.offset + self.len * size_of::<T>()
    }

    /// Several views that follow one another in the same mapping, as one view; `None` when
    /// they are not exactly adjacent.
    pub fn join(parts: &[&MapSlice<T>]) -> Option<MapSlice<T>> {
        let first = parts.first()?;
        let adjacent = parts
            .windows(2)
            .all(|w| Arc::ptr_eq(&w[0].map, &w[1].map) && w[0].end() == w[1].offset);
        adjacent.then(|| MapSlice {
            map: first.map.clone(),
            offset: first.offset,
            len: parts.iter().map(|p| p.len).sum(),
            _t: PhantomData,
        })
    }
}

impl<T: Plain> Deref for MapSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `new` checked that offset..offset + len·size_of::<T>() lies inside the
        // mapping and is aligned for T, and T is `Plain` (any bytes are a value). The mapping is
        // read-only and lives as long as `self.map`. The cache file is only ever replaced by
        // rename, never written in place, so its contents do not change under the view (see
        // docs/SECURITY.md for a file truncated by hand).
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(self.offset).cast::<T>(), self.len)
        }
    }
}

/// A weight buffer: the process's own (`O`: a `Vec`, or storage with an alignment of its
/// own), or a view into the weights cache.
#[derive(Clone)]
pub enum Buf<T, O = Vec<T>> {
    Owned(O),
    Mapped(MapSlice<T>),
}

impl<T: Plain, O: Deref<Target = [T]>> Deref for Buf<T, O> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            Buf::Owned(v) => v,
            Buf::Mapped(m) => m,
        }
    }
}

impl<T: Plain, O: Deref<Target = [T]> + FromIterator<T>> Buf<T, O> {
    /// The buffers one after the other: a view when every part is a view and they are adjacent
    /// in one mapping (parts written together to the cache), otherwise a copy.
    pub fn concat(parts: &[&Buf<T, O>]) -> Buf<T, O> {
        let maps: Option<Vec<&MapSlice<T>>> = parts
            .iter()
            .map(|p| match p {
                Buf::Mapped(m) => Some(m),
                Buf::Owned(_) => None,
            })
            .collect();
        if let Some(joined) = maps.and_then(|m| MapSlice::join(&m)) {
            return Buf::Mapped(joined);
        }
        Buf::Owned(parts.iter().flat_map(|p| p.iter().copied()).collect())
    }

    /// The values as bytes, to write them to the cache.
    pub fn as_bytes(&self) -> &[u8] {
        let values: &[T] = self;
        // SAFETY: T is a plain number type without padding; the byte view covers exactly the
        // values' memory and borrows it for as long as `self`.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), size_of_val(values)) }
    }
}

impl<T, O: Deref<Target = [T]>> fmt::Debug for Buf<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Buf::Owned(v) => write!(f, "Owned({} values)", v.len()),
            Buf::Mapped(m) => write!(f, "Mapped({} values at byte {})", m.len, m.offset),
        }
    }
}

/// Panels or rows, in their element type.
#[derive(Clone)]
pub enum Values {
    F32(Buf<f32>),
    F16(Buf<f16>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn map_of(bytes: &[u8]) -> Arc<Mmap> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        // SAFETY: a private temporary file nobody else writes.
        Arc::new(unsafe { Mmap::map(&f) }.unwrap())
    }

    #[test]
    fn views_are_bounds_and_alignment_checked_and_join_only_when_adjacent() {
        let values: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let map = map_of(&bytes);
        assert!(
            MapSlice::<f32>::new(map.clone(), 0, 17).is_none(),
            "past the end"
        );
        assert!(
            MapSlice::<f32>::new(map.clone(), 2, 1).is_none(),
            "misaligned"
        );
        assert!(
            MapSlice::<f32>::new(map.clone(), 0, usize::MAX).is_none(),
            "overflow"
        );
        let a = MapSlice::<f32>::new(map.clone(), 0, 4).unwrap();
        let b = MapSlice::<f32>::new(map.clone(), 16, 4).unwrap();
        let c = MapSlice::<f32>::new(map.clone(), 48, 4).unwrap();
        assert_eq!(&*a, &values[..4]);
        assert_eq!(&*MapSlice::join(&[&a, &b]).unwrap(), &values[..8]);
        assert!(MapSlice::join(&[&a, &c]).is_none());
        // Not adjacent: copied, same values.
        let (ba, bc): (Buf<f32>, Buf<f32>) = (Buf::Mapped(a), Buf::Mapped(c));
        let joined = Buf::concat(&[&ba, &bc]);
        assert!(matches!(joined, Buf::Owned(_)));
        assert_eq!(&*joined, [&values[..4], &values[12..16]].concat());
        assert_eq!(ba.as_bytes(), &bytes[..16]);
    }
}
