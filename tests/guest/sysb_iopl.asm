; Ring 3 with IOPL 0 in 32-bit protected mode (entered with SYSEXIT, left with
; SYSENTER): CLI, STI, HLT, MOV from CR0, RDMSR, RDTSC under CR4.TSD, WBINVD and
; LGDT raise #GP(0); POPF keeps IF and IOPL. The #GP handler (ring 0, stack from
; the TSS) records the fault and IRETs back to ring 3.
%include "guest.inc"

%include "ring3.inc"

test_main:
    mov eax, cr4
    or eax, 1 << 2                      ; TSD
    mov cr4, eax
    call enter_ring3
    CHECK_EQ [results + 0], 13, "cli vector"
    CHECK_EQ [results + 4], 0, "cli error"
    CHECK_EQ [results + 8], 13, "sti vector"
    CHECK_EQ [results + 16], 13, "hlt vector"
    CHECK_EQ [results + 24], 13, "mov from cr0 vector"
    CHECK_EQ [results + 32], 13, "rdmsr vector"
    CHECK_EQ [results + 40], 13, "rdtsc with tsd vector"
    CHECK_EQ [results + 48], 13, "wbinvd vector"
    CHECK_EQ [results + 56], 13, "lgdt vector"
    CHECK_EQ [results + 60], 0, "lgdt error"
    mov eax, [popf_result]
    and eax, 0x3201
    CHECK_EQ eax, 0x201, "popf if iopl cf"
    mov eax, [sysenter_flags]
    and eax, 0x200
    CHECK_EQ eax, 0, "sysenter clears if"
    mov eax, cr4
    and eax, ~(1 << 2)
    mov cr4, eax
    ret

ring3:
    TRY
    cli
    END_TRY
    SAVE_RESULT 0
    TRY
    sti
    END_TRY
    SAVE_RESULT 1
    TRY
    hlt
    END_TRY
    SAVE_RESULT 2
    TRY
    mov eax, cr0
    END_TRY
    SAVE_RESULT 3
    TRY
    mov ecx, 0x10
    rdmsr
    END_TRY
    SAVE_RESULT 4
    TRY
    rdtsc
    END_TRY
    SAVE_RESULT 5
    TRY
    wbinvd
    END_TRY
    SAVE_RESULT 6
    TRY
    lgdt [r3_gdt_pointer]
    END_TRY
    SAVE_RESULT 7
    ; POPF at CPL 3 > IOPL 0: IF (set) and IOPL (0) do not change, CF does.
    pushfd
    pop eax
    and eax, ~0x200
    or eax, 0x3001
    push eax
    popfd
    pushfd
    pop dword [popf_result]
    sysenter

popf_result: dd 0

%include "guest_end.inc"
