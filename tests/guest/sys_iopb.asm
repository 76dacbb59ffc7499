; The I/O permission bitmap at ring 3 with IOPL 0 (32-bit protected mode, the
; ring3.inc harness): IN/OUT/INS are allowed only when every port of the
; access is clear in the TSS bitmap and within the TSS limit; otherwise #GP(0).
%include "guest.inc"

; I/O map base 104 (just after the TSS); ports 0x00-0x8f described, all denied
; but 0x80, 0x82 and 0x83; then the mandatory 0xff byte. The limit ends there.
TSS_IO_MAP_BASE equ 104
%macro TSS_TAIL 0
    times 16 db 0xff                    ; ports 0x00-0x7f
    db 0xf2                             ; ports 0x80-0x87: 0x80, 0x82, 0x83 allowed
    db 0xff                             ; 0x88-0x8f
    db 0xff                             ; the byte after the map
%endmacro
%include "ring3.inc"

test_main:
    call enter_ring3
    CHECK_EQ [results + 0], 0xff, "in 0x80 (allowed)"
    CHECK_EQ [results + 8], 13, "in 0x81 (denied)"
    CHECK_EQ [results + 12], 0, "in 0x81 error"
    CHECK_EQ [results + 16], 0xff, "in ax 0x82 (allowed)"
    CHECK_EQ [results + 24], 13, "in ax 0x81 (half denied)"
    CHECK_EQ [results + 32], 13, "in eax 0x82 (0x84 denied)"
    CHECK_EQ [results + 40], 13, "in 0x3f8 (past the bitmap)"
    CHECK_EQ [results + 48], 0xff, "out 0x80 (allowed)"
    CHECK_EQ [results + 56], 13, "insb 0x81 (denied)"
    ret

ring3:
    TRY
    in al, 0x80                         ; allowed by the bitmap
    END_TRY
    SAVE_RESULT 0
    TRY
    in al, 0x81                         ; denied
    END_TRY
    SAVE_RESULT 1
    TRY
    in ax, 0x82                         ; 0x82 and 0x83 both allowed
    END_TRY
    SAVE_RESULT 2
    TRY
    in ax, 0x81                         ; 0x81 denied, 0x82 allowed: denied
    END_TRY
    SAVE_RESULT 3
    TRY
    in eax, 0x82                        ; 0x84 denied
    END_TRY
    SAVE_RESULT 4
    TRY
    mov dx, 0x3f8                       ; past the end of the bitmap (TSS limit)
    in al, dx
    END_TRY
    SAVE_RESULT 5
    TRY
    out 0x80, al                        ; allowed
    END_TRY
    SAVE_RESULT 6
    TRY
    mov dx, 0x81
    mov edi, scratch
    insb                                ; string forms consult the bitmap too
    END_TRY
    SAVE_RESULT 7
    sysenter

scratch: dd 0

%include "guest_end.inc"
