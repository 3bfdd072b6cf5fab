/*
 * The multiboot2 header (Multiboot2 specification, section 3.1): GRUB finds it in the
 * first 32 KiB of the image, 8-byte aligned. It asks for nothing beyond the defaults
 * (command line, modules, memory map and loader name are always supplied) and says the
 * image can use an EGA text console.
 */
    .section .multiboot2_header, "a"
    .balign 8
mb2_header_start:
    .long 0xe85250d6                        /* magic */
    .long 0                                 /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header_start /* header length */
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header_start))

    /* console flags tag (type 4): EGA text is supported */
    .balign 8
    .short 4
    .short 0
    .long 12
    .long 2

    /* end tag */
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:
