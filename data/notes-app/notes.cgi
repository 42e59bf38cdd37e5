#!/usr/bin/perl
# A small note service's request handler (CGI): ?list, ?read=NAME, ?search=WORD over
# the notes in $NOTES_DIR.
#
# The bug (on purpose, the labelled sample's attack): NAME is joined to the notes
# directory without a check, so ?read=../../../etc/passwd reads a file the service
# never reads normally, with exactly the system calls of an ordinary read.
use strict;
use warnings;

my $notes = $ENV{NOTES_DIR} or die "NOTES_DIR is not set\n";
my $q = $ENV{QUERY_STRING} // '';
$q =~ s/%([0-9A-Fa-f]{2})/chr(hex($1))/ge;
print "Content-Type: text/plain\r\n\r\n";

sub names {
    opendir(my $d, $notes) or die "cannot list notes: $!\n";
    my @n = sort grep { !/^\./ } readdir($d);
    closedir($d);
    return @n;
}

if ($q eq 'list') {
    print "$_\n" for names();
} elsif ($q =~ /^read=(.+)$/) {
    open(my $f, '<', "$notes/$1") or do { print "no such note\n"; exit 0 };
    print while <$f>;
    close($f);
} elsif ($q =~ /^search=(.+)$/) {
    my $word = $1;
    for my $n (names()) {
        open(my $f, '<', "$notes/$n") or next;
        while (<$f>) {
            if (index($_, $word) >= 0) { print "$n\n"; last }
        }
        close($f);
    }
} else {
    print "unknown request\n";
}
