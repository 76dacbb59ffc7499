; Exceptions through the IDT in protected mode (CPL 0 and CPL 3) and long
; mode: every handler records its vector and error code (none: ffffffff) and
; resumes at a label the test chose; the test prints and checks both.
%include "guest.inc"

SEL_CODE32   equ 0x08
SEL_DATA32   equ 0x10
SEL_CODE64   equ 0x18
SEL_ABSENT   equ 0x20              ; data segment, not present
SEL_TSS      equ 0x28
SEL_CODE3    equ 0x33              ; ring-3 code (RPL 3)
SEL_DATA3    equ 0x3b              ; ring-3 data
SEL_RODATA   equ 0x40              ; read-only data
SEL_TSS64    equ 0x48
SEL_TSS_B    equ 0x58
NO_ERROR     equ 0xffffffff
IDT_VECTORS  equ 0x40              ; vectors >= 0x40 lie beyond the IDT limit

; REPORT "name", vector, error: prints and checks the last exception, then clears it.
%macro REPORT 3
    push esi
    mov esi, %%name
    call puts
    pop esi
    CHECK_EQ [last_vector], %2, " vector"
    CHECK_EQ [last_error], %3, " error"
    mov dword [last_vector], 0xff
    mov dword [last_error], NO_ERROR
    jmp %%after
%%name: db %1, 10, 0
%%after:
%endmacro

%macro RESUME_AT 1
    mov dword [resume], %1
    mov dword [resume + 4], 0
%endmacro

test_main:
    LOAD_GDT gdt_pointer, SEL_CODE32, SEL_DATA32
    mov dword [last_vector], 0xff
    mov dword [last_error], NO_ERROR
    call build_idt32
    lidt [idt32_pointer]

    ; ---- protected mode, CPL 0 ----
    RESUME_AT .de
    xor edx, edx
    mov eax, 1
    xor ecx, ecx
    div ecx
.de: REPORT "pm divide error", 0, NO_ERROR
    RESUME_AT .ud
    ud2
.ud: REPORT "pm invalid opcode", 6, NO_ERROR
    RESUME_AT .bp
    int3
.bp: REPORT "pm breakpoint", 3, NO_ERROR
    RESUME_AT .gdt
    mov ax, 0x88
    mov ds, ax
.gdt: REPORT "pm selector beyond gdt", 13, 0x88
    RESUME_AT .np
    mov ax, SEL_ABSENT
    mov es, ax
.np: REPORT "pm absent data segment", 11, SEL_ABSENT
    RESUME_AT .ss
    mov ax, SEL_ABSENT
    mov ss, ax
.ss: REPORT "pm absent stack segment", 12, SEL_ABSENT
    RESUME_AT .nullss
    xor eax, eax
    mov ss, ax
.nullss: REPORT "pm null stack segment", 13, 0
    RESUME_AT .rodata
    mov ax, SEL_RODATA
    mov ss, ax
.rodata: REPORT "pm read-only stack segment", 13, SEL_RODATA
    RESUME_AT .absgate
    int 0x32
.absgate: REPORT "pm absent gate", 11, 0x32 * 8 + 2
    RESUME_AT .beyond
    int 0x80
.beyond: REPORT "pm vector beyond idt", 13, 0x80 * 8 + 2
    RESUME_AT .jmpdata
    jmp SEL_DATA32:0
.jmpdata: REPORT "pm far jump to data", 13, SEL_DATA32

    ; Double fault: #GP while the #GP gate is absent -> #NP -> #DF.
    and byte [idt32 + 13 * 8 + 5], 0x7f
    RESUME_AT .df
    mov ax, 0x88
    mov fs, ax
.df: REPORT "pm double fault", 8, 0
    or byte [idt32 + 13 * 8 + 5], 0x80

    ; Page fault with 32-bit paging: 4 MiB page 0 present, 4..8 MiB absent.
    mov dword [page_directory], 0x83
    mov eax, cr4
    or eax, 1 << 4                     ; PSE
    mov cr4, eax
    mov eax, page_directory
    mov cr3, eax
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    RESUME_AT .pf
    mov eax, [0x400010]
.pf: REPORT "pm page fault (read, not present)", 14, 0
    CHECK_EQ cr2, 0x400010, " cr2"
    RESUME_AT .pfw
    mov dword [0x400020], 1
.pfw: REPORT "pm page fault (write, not present)", 14, 2
    CHECK_EQ cr2, 0x400020, " cr2"
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax

    ; ---- protected mode, CPL 3 ----
    mov eax, tss
    mov [tss_descriptor + 2], ax
    shr eax, 16
    mov [tss_descriptor + 4], al
    mov [tss_descriptor + 7], ah
    mov dword [tss + 8], SEL_DATA32        ; SS0
    mov dword [tss + 4], ring0_stack_top   ; ESP0
    mov ax, SEL_TSS
    ltr ax
    mov [saved_esp], esp
    push dword SEL_DATA3
    push dword ring3_stack_top
    pushfd
    push dword SEL_CODE3
    push dword ring3
    iretd
back_in_ring0:                             ; INT 0x31 from ring 3 lands here
    mov ax, SEL_DATA32
    mov ds, ax
    mov es, ax
    mov esp, [saved_esp]
    mov eax, [ring3_results + 0]
    mov [last_vector], eax
    mov eax, [ring3_results + 4]
    mov [last_error], eax
    REPORT "ring3 int to dpl-0 gate", 13, 0x30 * 8 + 2
    mov eax, [ring3_results + 8]
    mov [last_vector], eax
    mov eax, [ring3_results + 12]
    mov [last_error], eax
    REPORT "ring3 loads ring-0 data", 13, SEL_DATA32
    mov eax, [ring3_results + 16]
    mov [last_vector], eax
    mov eax, [ring3_results + 20]
    mov [last_error], eax
    REPORT "ring3 hlt", 13, 0
    mov eax, [ring3_results + 24]
    CHECK_EQ eax, 0, "ring3 ds after iret to ring 3"
    mov eax, [ring3_results + 28]
    CHECK_EQ eax, 3, "ring3 cpl"

    ; ---- double fault through a task gate (as 32-bit Linux does) ----
    mov eax, tss_b
    mov [tss_b_descriptor + 2], ax
    shr eax, 16
    mov [tss_b_descriptor + 4], al
    mov [tss_b_descriptor + 7], ah
    mov dword [tss_b + 0x20], df_task
    mov dword [tss_b + 0x24], 2
    mov dword [tss_b + 0x38], df_stack_top
    mov dword [tss_b + 0x4c], SEL_CODE32
    mov dword [tss_b + 0x48], SEL_DATA32
    mov dword [tss_b + 0x50], SEL_DATA32
    mov dword [tss_b + 0x54], SEL_DATA32
    mov dword [tss_b + 0x58], SEL_DATA32
    mov dword [tss_b + 0x5c], SEL_DATA32
    mov dword [idt32 + 8 * 8], SEL_TSS_B << 16
    mov dword [idt32 + 8 * 8 + 4], 0x8500          ; present task gate
    and byte [idt32 + 13 * 8 + 5], 0x7f            ; #GP gate absent
    RESUME_AT .dft
    mov ax, 0x88
    mov fs, ax
.dft: REPORT "pm double fault through a task gate", 8, 0
    clts
    str ax
    movzx eax, ax
    CHECK_EQ eax, SEL_TSS, "task register after the task returned"
    call build_idt32

    ; ---- long mode ----
    call build_idt64
    mov eax, tss64
    mov [tss64_descriptor + 2], ax
    shr eax, 16
    mov [tss64_descriptor + 4], al
    mov [tss64_descriptor + 7], ah
    mov dword [pml4], pdpt + 3
    mov dword [pdpt], page_directory64 + 3
    mov dword [page_directory64 + 0], 0x000083
    mov dword [page_directory64 + 8], 0x200083
    mov dword [page_directory64 + 16], 0x400083
    mov dword [page_directory64 + 24], 0x600083
    mov eax, cr4
    or eax, 1 << 5                     ; PAE
    mov cr4, eax
    mov eax, pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 1 << 8
    wrmsr
    mov eax, cr0
    or eax, 1 << 31
    mov cr0, eax
    jmp SEL_CODE64:long64
back_from_long:
    ; Legacy protected mode again (paging off): print the long-mode results.
    mov esi, long_cases
.next:
    mov eax, [esi]
    test eax, eax
    jz .done
    mov ebx, [esi + 12]
    mov ecx, [ebx]
    mov [last_vector], ecx
    mov ecx, [ebx + 4]
    mov [last_error], ecx
    push esi
    mov esi, eax
    call puts
    pop esi
    mov eax, [last_vector]
    call put_hex32
    mov al, ' '
    call putc
    mov eax, [last_error]
    call put_hex32
    call put_nl
    mov eax, [last_vector]
    cmp eax, [esi + 4]
    jne FAIL
    mov eax, [last_error]
    cmp eax, [esi + 8]
    jne FAIL
    add esi, 16
    jmp .next
.done:
    CHECK_EQ [long_cr2], 0x800008, "long mode cr2"
    ret

; ---- ring 3 (iret target) ----
ring3:
    mov ax, ds                          ; DPL-0 DS was nulled by the IRET
    movzx eax, ax
    push eax
    mov ax, SEL_DATA3
    mov ds, ax
    mov es, ax
    pop dword [ring3_results + 24]
    mov eax, cs
    and eax, 3
    mov [ring3_results + 28], eax
    RESUME_AT .r1
    int 0x30
.r1:
    mov eax, [last_vector]
    mov [ring3_results + 0], eax
    mov eax, [last_error]
    mov [ring3_results + 4], eax
    RESUME_AT .r2
    mov ax, SEL_DATA32
    mov ds, ax
.r2:
    mov eax, [last_vector]
    mov [ring3_results + 8], eax
    mov eax, [last_error]
    mov [ring3_results + 12], eax
    RESUME_AT .r3
    hlt
.r3:
    mov eax, [last_vector]
    mov [ring3_results + 16], eax
    mov eax, [last_error]
    mov [ring3_results + 20], eax
    int 0x31                            ; DPL-3 gate back to ring 0

; The #DF task: records the error code, makes the interrupted task resume at
; `resume`, and returns to it with IRET (NT set by the task switch).
df_task:
    mov eax, [esp]
    mov [last_error], eax
    mov dword [last_vector], 8
    add esp, 4
    mov eax, [resume]
    mov [tss + 0x20], eax
    iretd
    jmp df_task

; ---- 32-bit IDT ----
build_idt32:
    xor ecx, ecx
.gate:
    mov eax, [stubs32 + ecx * 4]
    mov [idt32 + ecx * 8], ax
    mov word [idt32 + ecx * 8 + 2], SEL_CODE32
    mov word [idt32 + ecx * 8 + 4], 0x8e00     ; present, DPL 0, 32-bit interrupt gate
    shr eax, 16
    mov [idt32 + ecx * 8 + 6], ax
    inc ecx
    cmp ecx, IDT_VECTORS
    jne .gate
    mov byte [idt32 + 0x32 * 8 + 5], 0x0e      ; 0x32: not present
    mov eax, back_in_ring0
    mov [idt32 + 0x31 * 8], ax
    mov byte [idt32 + 0x31 * 8 + 5], 0xee      ; 0x31: DPL 3
    shr eax, 16
    mov [idt32 + 0x31 * 8 + 6], ax
    ret

common32:                                       ; [esp] vector, error, eip, cs, eflags
    push eax
    mov eax, [esp + 4]
    mov [last_vector], eax
    mov eax, [esp + 8]
    mov [last_error], eax
    mov eax, [resume]
    mov [esp + 12], eax
    pop eax
    add esp, 8
    iretd

%macro STUB32 1
stub32_%1:
  %if %1 == 8 || (%1 >= 10 && %1 <= 14) || %1 == 17
    push dword %1
  %else
    push dword NO_ERROR
    push dword %1
  %endif
    jmp common32
%endmacro
%assign v 0
%rep IDT_VECTORS
    STUB32 v
%assign v v + 1
%endrep
stubs32:
%assign v 0
%rep IDT_VECTORS
    dd stub32_ %+ v
%assign v v + 1
%endrep

; ---- 64-bit IDT and code ----
build_idt64:
    xor ecx, ecx
.gate:
    mov eax, [stubs64 + ecx * 4]
    mov edx, ecx
    shl edx, 4
    mov [idt64 + edx], ax
    mov word [idt64 + edx + 2], SEL_CODE64
    mov word [idt64 + edx + 4], 0x8e00
    shr eax, 16
    mov [idt64 + edx + 6], ax
    mov dword [idt64 + edx + 8], 0
    mov dword [idt64 + edx + 12], 0
    inc ecx
    cmp ecx, IDT_VECTORS
    jne .gate
    mov byte [idt64 + 0x32 * 16 + 5], 0x0e     ; not present
    mov byte [idt64 + 0x33 * 16 + 4], 1        ; IST1
    mov dword [tss64 + 0x24], ist_stack_top
    mov dword [tss64 + 4], ring0_stack_top
    ret

bits 64
%macro RECORD64 1
    mov eax, [last_vector]
    mov [long_results + %1 * 8], eax
    mov eax, [last_error]
    mov [long_results + %1 * 8 + 4], eax
    mov dword [last_vector], 0xff
    mov dword [last_error], NO_ERROR
%endmacro
%macro RESUME64 1
    lea rax, [rel %1]
    mov [resume], rax
%endmacro

long64:
    lidt [idt64_pointer]
    mov ax, SEL_TSS64                   ; 64-bit TSS with RSP0 and IST1
    ltr ax
    RESUME64 .l0
    ud2
.l0: RECORD64 0
    RESUME64 .l1
    xor edx, edx
    xor ecx, ecx
    mov eax, 1
    div rcx
.l1: RECORD64 1
    RESUME64 .l2
    mov ax, 0x88
    mov ds, ax
.l2: RECORD64 2
    RESUME64 .l3
    mov ax, SEL_ABSENT
    mov es, ax
.l3: RECORD64 3
    RESUME64 .l4
    mov rax, 0x8000000000000000
    mov rax, [rax]
.l4: RECORD64 4
    RESUME64 .l5
    mov rax, [0x800008]
.l5: RECORD64 5
    mov rax, cr2
    mov [long_cr2], eax
    RESUME64 .l6
    int 0x32
.l6: RECORD64 6
    RESUME64 .l7
    int 0x80
.l7: RECORD64 7
    RESUME64 .l8
    int3
.l8: RECORD64 8
    ; IST: vector 0x33 switches to the IST1 stack.
    RESUME64 .l9
    int 0x33
.l9: RECORD64 9
    mov eax, [ist_seen]
    mov [long_results + 9 * 8 + 4], eax
    ; Leave long mode through compatibility mode.
    push SEL_CODE32
    lea rax, [rel compat]
    push rax
    o64 retf

common64:                                       ; [rsp] vector, error, rip, cs, rflags, rsp, ss
    push rax
    mov rax, [rsp + 8]
    mov [last_vector], eax
    mov rax, [rsp + 16]
    mov [last_error], eax
    mov rax, [resume]
    mov [rsp + 24], rax
    ; Was this frame on the IST stack?
    mov rax, rsp
    sub rax, ist_stack
    cmp rax, 1024
    setb al
    movzx eax, al
    mov [ist_seen], eax
    pop rax
    add rsp, 16
    iretq

%macro STUB64 1
stub64_%1:
  %if %1 == 8 || (%1 >= 10 && %1 <= 14) || %1 == 17
    push qword %1
  %else
    push qword -1
    push qword %1
  %endif
    jmp common64
%endmacro
%assign v 0
%rep IDT_VECTORS
    STUB64 v
%assign v v + 1
%endrep
stubs64:
%assign v 0
%rep IDT_VECTORS
    dd stub64_ %+ v
%assign v v + 1
%endrep

bits 32
compat:
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    mov ecx, 0xc0000080
    rdmsr
    and eax, ~(1 << 8)
    wrmsr
    lidt [idt32_pointer]
    jmp back_from_long

; name, expected vector, expected error, result slot
align 4
long_cases:
    dd name_l0, 6, NO_ERROR, long_results + 0
    dd name_l1, 0, NO_ERROR, long_results + 8
    dd name_l2, 13, 0x88, long_results + 16
    dd name_l3, 11, SEL_ABSENT, long_results + 24
    dd name_l4, 13, 0, long_results + 32
    dd name_l5, 14, 0, long_results + 40
    ; Slots 6 (int 0x32, absent gate: #NP) and 7 (int 0x80, beyond the IDT limit: #GP) are
    ; not compared: qemu's TCG reports the IDT error code as vector * 16 + 2 in long mode,
    ; Kiln as vector * 8 + 2 (the selector-index format, index = vector, as in legacy mode).
    dd name_l8, 3, NO_ERROR, long_results + 64
    dd name_l9, 0x33, 1, long_results + 72
    dd 0
name_l0: db "long invalid opcode ", 0
name_l1: db "long divide error ", 0
name_l2: db "long selector beyond gdt ", 0
name_l3: db "long absent data segment ", 0
name_l4: db "long non-canonical address ", 0
name_l5: db "long page fault (read, not present) ", 0
name_l8: db "long breakpoint ", 0
name_l9: db "long ist gate (vector, on ist stack) ", 0

align 8
gdt:
    dq 0
    dq 0x00cf9a000000ffff              ; 0x08 code32
    dq 0x00cf92000000ffff              ; 0x10 data32
    dq 0x00209a0000000000              ; 0x18 code64
    dq 0x00cf12000000ffff              ; 0x20 data, not present
tss_descriptor:                        ; 0x28 32-bit TSS (base patched at run time)
    dw 0x67, 0
    db 0, 0x89, 0, 0
    dq 0x00cffa000000ffff              ; 0x30 ring-3 code
    dq 0x00cff2000000ffff              ; 0x38 ring-3 data
    dq 0x00cf90000000ffff              ; 0x40 read-only data
tss64_descriptor:                      ; 0x48 64-bit TSS, 16 bytes (base patched at run time)
    dw 0x67, 0
    db 0, 0x89, 0, 0
    dq 0
tss_b_descriptor:                      ; 0x58 32-bit TSS of the #DF task
    dw 0x67, 0
    db 0, 0x89, 0, 0
gdt_end:
gdt_pointer:
    dw gdt_end - gdt - 1
    dd gdt
idt32_pointer:
    dw IDT_VECTORS * 8 - 1
    dd idt32
idt64_pointer:
    dw IDT_VECTORS * 16 - 1
    dq idt64
align 8
resume: dq 0
last_vector: dd 0
last_error: dd 0
saved_esp: dd 0
ist_seen: dd 0
long_cr2: dd 0
ring3_results: times 8 dd 0
long_results: times 16 dd 0

align 4096
page_directory: times 1024 dd 0
pml4: times 512 dq 0
pdpt: times 512 dq 0
page_directory64: times 512 dq 0
idt32: times IDT_VECTORS dq 0
idt64: times IDT_VECTORS * 2 dq 0
tss: times 0x68 db 0
tss64: times 0x68 db 0
tss_b: times 0x68 db 0
df_stack: times 1024 db 0
df_stack_top:
align 16
ring3_stack: times 1024 db 0
ring3_stack_top:
ring0_stack: times 1024 db 0
ring0_stack_top:
ist_stack: times 1024 db 0
ist_stack_top:

%include "guest_end.inc"
