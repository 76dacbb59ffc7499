; Soft MMU: PAE paging with 4 KiB and 2 MiB pages and EFER.NXE. Page faults
; (instruction fetch from a no-execute page, a reserved bit set, a fetch from a
; missing page) are handled by an IDT handler that prints the error code (with
; the I/D and RSVD bits; P masked for RSVD faults, see the handler) and CR2,
; rewrites the 64-bit entry and retries.
%include "guest.inc"

PDPT    equ 0x300000                   ; 32-byte aligned
PD      equ 0x301000
PT      equ 0x302000                   ; identity 4 KiB pages for 0..2 MiB
P       equ 1
RW      equ 2
PS      equ 0x80
ACC     equ 0x20
DIRTY   equ 0x40
XD_HI   equ 0x80000000                 ; bit 63, in the high dword

test_main:
    lgdt [gdt_descriptor]
    jmp 0x08:.flat
.flat:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, pf_handler
    mov [idt + 14 * 8], ax
    mov word [idt + 14 * 8 + 2], 0x08
    mov word [idt + 14 * 8 + 4], 0x8e00
    shr eax, 16
    mov [idt + 14 * 8 + 6], ax
    lidt [idt_descriptor]

    mov edi, PDPT
    mov ecx, 3 * 1024
    xor eax, eax
    rep stosd
    mov edi, PT
    mov eax, P | RW
    mov ecx, 512
.fill:
    mov [edi], eax
    mov dword [edi + 4], 0
    add edi, 8
    add eax, 0x1000
    loop .fill
    mov dword [PDPT], PD | P
    mov dword [PD + 0 * 8], PT | P | RW
    mov dword [PD + 1 * 8], 0x200000 | PS | P | RW  ; 2..4 MiB identity
    mov dword [PD + 2 * 8], 0x200000 | PS | P | RW  ; 4..6 MiB: alias, no-execute
    mov dword [PD + 2 * 8 + 4], XD_HI
    mov dword [PD + 3 * 8], 0x200000 | 0x2000 | PS | P | RW  ; 6..8 MiB: reserved bit 13
    ; PD[4] (8..10 MiB) not present.
    ; Code at phys 0x200100: mov eax, 0x77; ret
    mov byte [0x200100], 0xb8
    mov dword [0x200101], 0x77
    mov byte [0x200105], 0xc3

    mov ecx, 0xc0000080                ; EFER
    rdmsr
    or eax, 0x800                      ; NXE
    wrmsr
    mov eax, cr4
    or eax, 0x20                       ; PAE
    mov cr4, eax
    mov eax, PDPT
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000                 ; PG, WP
    mov cr0, eax
    PRINT "pae paging on"

    mov eax, 0x200100
    call eax
    CHECK_EQ eax, 0x77, "code via executable page"
    mov dword [0x200010], 5
    mov eax, [PD + 1 * 8]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC | DIRTY, "2M pde a/d"
    mov eax, [0x400010]                ; data reads from a no-execute page are fine
    CHECK_EQ eax, 5, "read via nx alias"

    ; Fetch from the no-execute alias: P | I/D.
    mov dword [fix_pte], PD + 2 * 8
    mov dword [fix_lo], 0x200000 | PS | P | RW
    mov dword [fix_hi], 0
    mov eax, 0x400100
    call eax
    CHECK_EQ eax, 0x77, "code after nx fault"

    ; A reserved bit: P | RSVD.
    mov dword [fix_pte], PD + 3 * 8
    mov dword [fix_lo], 0x200000 | PS | P | RW
    mov eax, [0x600010]
    CHECK_EQ eax, 5, "read after rsvd fault"

    ; Fetch from a missing page: I/D only.
    mov dword [fix_pte], PD + 4 * 8
    mov dword [fix_lo], 0x200000 | PS | P | RW
    mov eax, 0x800100
    call eax
    CHECK_EQ eax, 0x77, "code after not-present fetch"

    CHECK_EQ [fault_count], 3, "page faults"
    ret

pf_handler:
    push eax
    push ebx
    mov eax, [esp + 8]
    test eax, 8
    jz .print
    ; SDM 4.7: RSVD is only ever reported with P set; QEMU 7.2 leaves P clear.
    ; Print RSVD faults without P so the output is the same on both.
    and eax, ~1
.print:
    CHECK_EQ eax, eax, "pf error"
    mov eax, cr2
    CHECK_EQ eax, eax, "pf cr2"
    inc dword [fault_count]
    cmp dword [fault_count], 3
    ja FAIL
    mov ebx, [fix_pte]
    mov eax, [fix_hi]
    mov [ebx + 4], eax
    mov eax, [fix_lo]
    mov [ebx], eax
    mov eax, cr2
    invlpg [eax]
    pop ebx
    pop eax
    add esp, 4
    iret

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff
    dq 0x00cf92000000ffff
gdt_end:
gdt_descriptor:
    dw gdt_end - gdt - 1
    dd gdt
idt_descriptor:
    dw 15 * 8 - 1
    dd idt
align 8
idt:
    times 15 dq 0
fault_count: dd 0
fix_pte: dd 0
fix_lo: dd 0
fix_hi: dd 0

%include "guest_end.inc"
