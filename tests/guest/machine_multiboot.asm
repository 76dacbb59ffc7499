; Multiboot v1 boot information as the loader leaves it (run with
; machine_multiboot.args: -m 64M -append "hello world" and two modules):
; flags, mem_lower/mem_upper, command line, modules (page aligned, contents,
; strings), the memory map around the 640 KiB - 1 MiB hole, boot loader name,
; and the entry state (IF clear, protected mode).
%include "guest.inc"

MBI_FLAGS    equ 0
MBI_MEM_LOW  equ 4
MBI_MEM_UP   equ 8
MBI_CMDLINE  equ 16
MBI_MODS_CNT equ 20
MBI_MODS     equ 24
MBI_MMAP_LEN equ 44
MBI_MMAP     equ 48
MBI_NAME     equ 64

test_main:
    pushfd
    pop eax
    and eax, 0x200
    CHECK_EQ eax, 0, "entry if"
    CHECK_EQ [multiboot_magic], 0x2badb002, "magic"
    mov ebx, [multiboot_info]

    mov eax, [ebx + MBI_FLAGS]
    and eax, 0x24d                     ; memory, cmdline, mods, mmap, boot loader name
    CHECK_EQ eax, 0x24d, "info flags"
    CHECK_EQ [ebx + MBI_MEM_LOW], 639, "mem_lower"
    ; mem_upper is the KiB of RAM from 1 MiB on (firmware may keep a little at the top).
    mov eax, [ebx + MBI_MEM_UP]
    cmp eax, 63 * 1024 - 1024
    setae dl
    cmp eax, 63 * 1024
    setbe al
    and al, dl
    movzx eax, al
    CHECK_EQ eax, 1, "mem_upper matches -m 64M"

    ; The command line is "<kernel path> hello world".
    mov esi, [ebx + MBI_CMDLINE]
    mov edi, suffix_cmdline
    call ends_with
    CHECK_EQ eax, 1, "cmdline ends with append"

    mov esi, [ebx + MBI_NAME]
    movzx eax, byte [esi]
    test eax, eax
    setnz al
    CHECK_EQ eax, 1, "boot loader name"

    ; Modules.
    CHECK_EQ [ebx + MBI_MODS_CNT], 2, "mods_count"
    mov ebp, [ebx + MBI_MODS]
    mov eax, [ebp + 0]
    and eax, 0xfff
    CHECK_EQ eax, 0, "mod0 page aligned"
    mov eax, [ebp + 4]
    sub eax, [ebp + 0]
    CHECK_EQ eax, 32, "mod0 size"
    mov esi, [ebp + 0]
    mov edi, module_text
    mov ecx, 32
    repe cmpsb
    sete al
    movzx eax, al
    CHECK_EQ eax, 1, "mod0 contents"
    mov esi, [ebp + 8]
    mov edi, suffix_modarg
    call ends_with
    CHECK_EQ eax, 1, "mod0 string has args"
    mov esi, [ebp + 24]
    mov edi, suffix_module
    call ends_with
    CHECK_EQ eax, 1, "mod1 string is its path"
    mov eax, [ebp + 16]
    and eax, 0xfff
    CHECK_EQ eax, 0, "mod1 page aligned"
    mov eax, [ebp + 16]
    cmp eax, [ebp + 4]
    setae al
    movzx eax, al
    CHECK_EQ eax, 1, "mod1 after mod0"
    mov esi, [ebp + 16]
    mov edi, module_text
    mov ecx, 32
    repe cmpsb
    sete al
    movzx eax, al
    CHECK_EQ eax, 1, "mod1 contents"
    ; The modules lie above the kernel.
    mov eax, [ebp + 0]
    cmp eax, guest_bss_end
    setae al
    movzx eax, al
    CHECK_EQ eax, 1, "mods above kernel"

    ; Memory map: available RAM from 0 below 640 KiB, from 1 MiB for most of
    ; the 64 MiB, and nothing available inside 640 KiB - 1 MiB.
    mov esi, [ebx + MBI_MMAP]
    mov edi, esi
    add edi, [ebx + MBI_MMAP_LEN]
    xor ecx, ecx                       ; bit 0: low entry ok, bit 1: high entry ok, bit 2: hole violated
.entry:
    cmp esi, edi
    jae .done
    cmp dword [esi + 20], 1            ; type available
    jne .next
    cmp dword [esi + 8], 0             ; base high
    jne .next
    mov eax, [esi + 4]                 ; base low
    mov edx, eax
    add edx, [esi + 12]                ; end (length low; entries below 4 GiB)
    cmp eax, 0
    jne .not_low
    cmp edx, 0x9f000
    jb .not_low
    cmp edx, 0xa0000
    ja .not_low
    or ecx, 1
.not_low:
    cmp eax, 0x100000
    jne .not_high
    cmp edx, 0x100000 + 60 * 1024 * 1024
    jb .not_high
    cmp edx, 64 * 1024 * 1024
    ja .not_high
    or ecx, 2
.not_high:
    ; [base, end) must not meet [0xa0000, 0x100000).
    cmp eax, 0x100000
    jae .next
    cmp edx, 0xa0000
    jbe .next
    or ecx, 4
.next:
    add esi, [esi]
    add esi, 4
    jmp .entry
.done:
    CHECK_EQ ecx, 3, "memory map"
    ret

; ends_with: ESI = string, EDI = suffix; EAX = 1 when the string ends with the suffix.
ends_with:
    push ecx
    push edx
    push esi
    push edi
    mov edx, esi
.len_s:
    cmp byte [edx], 0
    je .have_s
    inc edx
    jmp .len_s
.have_s:
    sub edx, esi                       ; EDX = strlen(string)
    mov ecx, edi
.len_x:
    cmp byte [ecx], 0
    je .have_x
    inc ecx
    jmp .len_x
.have_x:
    sub ecx, edi                       ; ECX = strlen(suffix)
    xor eax, eax
    cmp edx, ecx
    jb .out
    add esi, edx
    sub esi, ecx
    repe cmpsb
    jne .out
    mov eax, 1
.out:
    pop edi
    pop esi
    pop edx
    pop ecx
    ret

suffix_cmdline: db " hello world", 0
suffix_modarg: db "machine_multiboot.module modarg", 0
suffix_module: db "/machine_multiboot.module", 0
module_text: db "KILN-MODULE-0123456789abcdefghi", 10

%include "guest_end.inc"
