; Compute-bound Multiboot kernel for bench/emulator/boot.sh: an integer loop
; and a bitwise CRC-32, with instruction counts known exactly so the script
; can print guest instructions per second. Prints the checksums (identical on
; kiln and qemu) and exits through isa-debug-exit.
%include "guest.inc"

LOOP_ITERATIONS equ 40000000          ; 6 instructions each
CRC_BYTES       equ 65536
CRC_ROUNDS      equ 40                ; 70 instructions per byte

test_main:
    mov ecx, LOOP_ITERATIONS
    xor eax, eax
.loop:
    add eax, ecx
    imul eax, eax, 3
    xor eax, ecx
    ror eax, 3
    dec ecx
    jnz .loop
    CHECK_EQ eax, eax, "integer loop"

    mov ebx, CRC_ROUNDS
    mov eax, 0xffffffff
.round:
    xor ecx, ecx
.byte:
    movzx edx, byte [crc_data + ecx]
    xor eax, edx
    mov edi, 8
.bit:
    mov edx, eax
    shr eax, 1
    and edx, 1
    neg edx
    and edx, 0xedb88320
    xor eax, edx
    dec edi
    jnz .bit
    inc ecx
    cmp ecx, CRC_BYTES
    jb .byte
    dec ebx
    jnz .round
    CHECK_EQ eax, eax, "crc"
    ret

%include "guest_end.inc"
absolute guest_bss_end
crc_data: resb CRC_BYTES               ; zeroed by the loader
