; Soft MMU: 32-bit paging with 4 KiB and 4 MiB (CR4.PSE) pages, two linear
; aliases of one physical page, accessed/dirty bits written to the page tables,
; and page faults (not present, write to a read-only page with CR0.WP,
; instruction fetch) handled by an IDT handler that prints the error code and
; CR2, fixes the mapping and returns to retry the access. Code reached through
; one alias and rewritten through the other runs in its new form.
%include "guest.inc"

PD      equ 0x300000                   ; page directory
PT0     equ 0x301000                   ; identity map of 0..4 MiB
PT3     equ 0x302000                   ; linear 12..16 MiB, 4 KiB pages into phys 5 MiB
P       equ 1
RW      equ 2
PS      equ 0x80
ACC     equ 0x20
DIRTY   equ 0x40

test_main:
    ; Our own GDT and IDT (only #PF has a handler).
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
    mov word [idt + 14 * 8 + 4], 0x8e00  ; present 32-bit interrupt gate, DPL 0
    shr eax, 16
    mov [idt + 14 * 8 + 6], ax
    lidt [idt_descriptor]

    ; Clear the paging structures.
    mov edi, PD
    mov ecx, 3 * 1024
    xor eax, eax
    rep stosd
    ; PT0: identity 4 KiB pages for 0..4 MiB.
    mov edi, PT0
    mov eax, P | RW
    mov ecx, 1024
.fill:
    stosd
    add eax, 0x1000
    loop .fill
    mov dword [PD + 0 * 4], PT0 | P | RW
    mov dword [PD + 1 * 4], 0x400000 | PS | P | RW  ; 4..8 MiB identity, one 4 MiB page
    mov dword [PD + 2 * 4], 0x400000 | PS | P | RW  ; 8..12 MiB: alias of the same 4 MiB
    mov dword [PD + 3 * 4], PT3 | P | RW
    mov dword [PT3 + 0 * 4], 0x500000 | P | RW       ; 0xc00000 -> 5 MiB
    ; PT3[1] (0xc01000) not present, PT3[2] (0xc02000) read-only, PT3[3] (0xc03000) not present.
    mov dword [PT3 + 2 * 4], 0x502000 | P
    ; Code at phys 0x503000 (reached later at 0xc03000): mov eax, imm32; ret
    mov byte [0x503000], 0xb8
    mov dword [0x503001], 0x5a5a5a5a
    mov byte [0x503005], 0xc3

    mov eax, cr4
    or eax, 0x10                       ; PSE
    mov cr4, eax
    mov eax, PD
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80010000                 ; PG, WP
    mov cr0, eax
    PRINT "paging on"

    ; Two linear aliases of one 4 MiB page.
    mov dword [0x400010], 0x12345678
    mov eax, [0x800010]
    CHECK_EQ eax, 0x12345678, "alias read"
    mov eax, [PD + 1 * 4]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC | DIRTY, "4M pde written a/d"
    mov eax, [PD + 2 * 4]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC, "4M pde read a/d"

    ; Accessed on a read, dirty on the first write, in the PTE; the PDE only gets A.
    mov eax, [0xc00000]
    mov eax, [PT3 + 0 * 4]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC, "pte after read"
    mov dword [0xc00000], 1
    mov eax, [PT3 + 0 * 4]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC | DIRTY, "pte after write"
    mov eax, [PD + 3 * 4]
    and eax, ACC | DIRTY
    CHECK_EQ eax, ACC, "pde a/d"
    mov eax, [0x500000]
    CHECK_EQ eax, 1, "phys of 0xc00000"

    ; Not present: the handler maps 0xc01000 -> 0x501000 and the read is retried.
    mov dword [0x501008], 0xabcd
    mov dword [fix_pte], PT3 + 1 * 4
    mov dword [fix_value], 0x501000 | P | RW
    mov eax, [0xc01008]
    CHECK_EQ eax, 0xabcd, "after not-present fault"

    ; Write to a read-only page with CR0.WP: the handler makes it writable.
    mov dword [fix_pte], PT3 + 2 * 4
    mov dword [fix_value], 0x502000 | P | RW
    mov dword [0xc02004], 0x7777
    mov eax, [0x502004]
    CHECK_EQ eax, 0x7777, "after write fault"

    ; Instruction fetch from a missing page.
    mov dword [fix_pte], PT3 + 3 * 4
    mov dword [fix_value], 0x503000 | P | RW
    mov eax, 0xc03000
    call eax
    CHECK_EQ eax, 0x5a5a5a5a, "code at 0xc03000"
    ; Rewrite it through the identity alias (another linear page, same physical page).
    mov dword [0x503001], 0x6b6b6b6b
    mov eax, 0xc03000
    call eax
    CHECK_EQ eax, 0x6b6b6b6b, "rewritten code"

    CHECK_EQ [fault_count], 3, "page faults"
    ret

; #PF: print the error code and CR2, install the fix, retry.
pf_handler:
    push eax
    push ebx
    mov eax, [esp + 8]                 ; error code
    CHECK_EQ eax, eax, "pf error"
    mov eax, cr2
    CHECK_EQ eax, eax, "pf cr2"
    inc dword [fault_count]
    cmp dword [fault_count], 3
    ja FAIL                            ; a fix that did not work would loop
    mov ebx, [fix_pte]
    mov eax, [fix_value]
    mov [ebx], eax
    mov eax, cr2
    invlpg [eax]
    pop ebx
    pop eax
    add esp, 4                         ; error code
    iret

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08: flat 32-bit code
    dq 0x00cf92000000ffff              ; 0x10: flat data
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
fix_value: dd 0

%include "guest_end.inc"
