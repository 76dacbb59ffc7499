; Triple fault: with an empty IDT every exception fails to be delivered, the
; resulting #DF fails too, and the CPU shuts down; the PC resets it.
;
; Expected result: the lines below up to "triple fault next", then no PASS or
; FAIL line. With -no-reboot (as the guest-test runners start both machines)
; qemu-system-x86_64 and kiln-system-x86_64 exit with status 0 at the reset,
; so this test passes when the exit status is 0 (not the usual 1) and the
; output matches. Without -no-reboot the machine reboots and runs the guest
; again, printing the same lines over and over.
%include "guest.inc"

test_main:
    PRINT "loading an empty IDT"
    lidt [empty_idt]
    PRINT "triple fault next"
    ud2                                ; #UD -> #GP (IDT limit) -> #DF -> shutdown
    PRINT "still running after the triple fault"
    jmp FAIL

empty_idt:
    dw 0
    dd 0

%include "guest_end.inc"
