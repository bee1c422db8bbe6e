//! Which ggml buffers the backend reads and writes — a pure decision, no ggml symbols (`abi`
//! asks it with the buffer type's names).

/// Whether tensors in a buffer of this type may be read and written by the backend: host
/// buffer types, and Metal's mapped type (`MTL<n>_Mapped` on device `MTL<n>`: the mmapped
/// model file, plain host memory on Apple silicon). Never `MTL<n>_Private` (GPU addresses, not
/// host pointers), nor Metal's plain shared type (`MTL<n>`: written by the GPU asynchronously;
/// not accepted until its synchronisation is shown).
pub(crate) fn readable_buffer_type(is_host: bool, device: &str, buffer_type: &str) -> bool {
    if is_host {
        return true;
    }
    let metal_device = device
        .strip_prefix("MTL")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    metal_device && buffer_type.strip_suffix("_Mapped") == Some(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metal_mapped_buffers_are_readable_private_ones_never() {
        assert!(readable_buffer_type(true, "CPU", "CPU"));
        assert!(readable_buffer_type(false, "MTL0", "MTL0_Mapped"));
        assert!(readable_buffer_type(false, "MTL12", "MTL12_Mapped"));
        assert!(!readable_buffer_type(false, "MTL0", "MTL0_Private"));
        assert!(!readable_buffer_type(false, "MTL0", "MTL0"));
        assert!(!readable_buffer_type(false, "MTL0", "MTL1_Mapped"));
        assert!(!readable_buffer_type(false, "CUDA0", "CUDA0_Mapped"));
        assert!(!readable_buffer_type(false, "MTL", "MTL_Mapped"));
    }
}
