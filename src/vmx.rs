//! VMX files: parse and edit preserving every untouched byte.
