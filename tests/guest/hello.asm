; Smallest guest: Multiboot entry state, serial output, isa-debug-exit.
%include "guest.inc"

test_main:
    PRINT "hello from a Multiboot guest"
    CHECK_EQ [multiboot_magic], 0x2badb002, "multiboot magic"
    ; Multiboot leaves protected mode on, paging off.
    mov eax, cr0
    and eax, 0x80000001
    CHECK_EQ eax, 1, "cr0 pe/pg"
    ret

%include "guest_end.inc"
