//! A small GGUF writer for tests: rebuilds a parsed file with edits, or builds one from scratch.
#![allow(dead_code)]

use mhmoe::gguf::{Gguf, Value};

/// A metadata value to write.
#[derive(Clone, Debug)]
pub enum Kv {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// An array copied from a parsed file: element type id, length, raw element bytes.
    RawArray(u32, u64, Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct Builder {
    pub version: u32,
    pub kvs: Vec<(String, Kv)>,
    pub tensors: Vec<Tensor>,
    pub alignment: u64,
}

impl Builder {
    /// Rebuilds `bytes` (a valid GGUF) as an editable builder.
    pub fn from_file(bytes: &[u8]) -> Builder {
        let g = Gguf::parse(bytes).unwrap();
        let kvs = g
            .metadata()
            .map(|(k, v)| {
                let kv = match v {
                    Value::U32(x) => Kv::U32(x),
                    Value::I32(x) => Kv::I32(x),
                    Value::F32(x) => Kv::F32(x),
                    Value::Bool(x) => Kv::Bool(x),
                    Value::Str(s) => Kv::Str(s.to_owned()),
                    Value::Array(a) => {
                        let start = a.offset();
                        // Find the end by walking: re-serialize through iteration.
                        let mut raw = Vec::new();
                        for e in a.iter() {
                            match e {
                                Value::Str(s) => {
                                    raw.extend((s.len() as u64).to_le_bytes());
                                    raw.extend(s.as_bytes());
                                }
                                Value::U32(x) => raw.extend(x.to_le_bytes()),
                                Value::I32(x) => raw.extend(x.to_le_bytes()),
                                Value::F32(x) => raw.extend(x.to_le_bytes()),
                                Value::U8(x) => raw.push(x),
                                Value::I8(x) => raw.push(x as u8),
                                other => panic!("unsupported array element {other:?}"),
                            }
                        }
                        let _ = start;
                        Kv::RawArray(a.elem_type() as u32, a.len() as u64, raw)
                    }
                    Value::U64(x) => Kv::U32(x as u32),
                    other => panic!("unsupported metadata value {other:?}"),
                };
                (k.to_owned(), kv)
            })
            .collect();
        let tensors = g
            .tensors()
            .map(|t| Tensor {
                name: t.name.to_owned(),
                dims: t.dims[..t.n_dims].to_vec(),
                ty: t.ty.id(),
                data: t.data.to_vec(),
            })
            .collect();
        Builder {
            version: g.version(),
            kvs,
            tensors,
            alignment: g.alignment(),
        }
    }

    pub fn set(&mut self, key: &str, v: Kv) -> &mut Self {
        match self.kvs.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = v,
            None => self.kvs.push((key.to_owned(), v)),
        }
        self
    }

    pub fn remove_key(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    pub fn tensor_mut(&mut self, name: &str) -> &mut Tensor {
        self.tensors.iter_mut().find(|t| t.name == name).unwrap()
    }

    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    /// Serializes; tensor data is laid out in order at the alignment.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kvs.len() as u64).to_le_bytes());
        let s = |out: &mut Vec<u8>, s: &str| {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        };
        for (k, v) in &self.kvs {
            s(&mut out, k);
            match v {
                Kv::U32(x) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Kv::I32(x) => {
                    out.extend(5u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Kv::F32(x) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(x.to_le_bytes());
                }
                Kv::Bool(x) => {
                    out.extend(7u32.to_le_bytes());
                    out.push(*x as u8);
                }
                Kv::Str(x) => {
                    out.extend(8u32.to_le_bytes());
                    s(&mut out, x);
                }
                Kv::RawArray(ty, n, raw) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(ty.to_le_bytes());
                    out.extend(n.to_le_bytes());
                    out.extend(raw);
                }
            }
        }
        let align = self.alignment.max(1) as usize;
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(align) * align;
        }
        for (t, off) in self.tensors.iter().zip(&offsets) {
            s(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.to_le_bytes());
            out.extend((*off as u64).to_le_bytes());
        }
        while out.len() % align != 0 {
            out.push(0);
        }
        let base = out.len();
        for (t, off) in self.tensors.iter().zip(&offsets) {
            out.resize(base + off, 0);
            out.extend(&t.data);
        }
        out
    }
}
