"""pmap: the software MMU — per-map translations from virtual page to page.

`rd` holds every valid translation (vpn -> page); `wr` holds the subset that
allows writing.  A translation exists only where the map entry allows the
access, so the read/write fast paths need no map lookup.  Each mapped page
records its translations in `page.pv` (the pv list), so a page can be
unmapped everywhere at once (pageout, COW, collapse).

Referenced/modified bits live on the page (`referenced`, `dirty`), set by the
accessor that uses the translation, as x86 keeps them in the pv head.
Lock: the kernel lock.  Invariant: for every (vpn -> page) in `rd`,
(self, vpn) is in page.pv, and the reverse; `wr` is a subset of `rd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .page import VMPage


class Pmap:
    __slots__ = ("rd", "wr", "__weakref__")

    def __init__(self) -> None:
        self.rd: dict[int, VMPage] = {}
        self.wr: dict[int, VMPage] = {}

    def enter(self, vpn: int, page: VMPage, writable: bool) -> None:
        old = self.rd.get(vpn)
        if old is not page:
            if old is not None:
                old.pv.discard((self, vpn))
            self.rd[vpn] = page
            page.pv.add((self, vpn))
        if writable:
            self.wr[vpn] = page
        else:
            self.wr.pop(vpn, None)

    def vpns_in(self, svpn: int, evpn: int) -> list[int]:
        """The vpns of [svpn, evpn) that have a translation."""
        # Walk whichever is smaller: the range or the translations.
        if evpn - svpn <= len(self.rd):
            rd = self.rd
            return [v for v in range(svpn, evpn) if v in rd]
        return [v for v in self.rd if svpn <= v < evpn]

    def remove(self, svpn: int, evpn: int) -> None:
        """Drop translations of [svpn, evpn)."""
        for vpn in self.vpns_in(svpn, evpn):
            page = self.rd.pop(vpn)
            self.wr.pop(vpn, None)
            page.pv.discard((self, vpn))

    def write_protect(self, svpn: int, evpn: int) -> None:
        """Drop write permission of [svpn, evpn)."""
        wr = self.wr
        if evpn - svpn <= len(wr):
            for vpn in range(svpn, evpn):
                wr.pop(vpn, None)
        else:
            for vpn in [v for v in wr if svpn <= v < evpn]:
                del wr[vpn]

    def protect(self, svpn: int, evpn: int, readable: bool, writable: bool) -> None:
        """Reduce translations of [svpn, evpn) to at most the given rights."""
        if not readable:
            self.remove(svpn, evpn)
        elif not writable:
            self.write_protect(svpn, evpn)

    def clear(self) -> None:
        for vpn, page in self.rd.items():
            page.pv.discard((self, vpn))
        self.rd.clear()
        self.wr.clear()


def page_remove_all(page: VMPage) -> None:
    """Remove every translation of `page` (pmap_page_protect(VM_PROT_NONE))."""
    for pm, vpn in page.pv:
        del pm.rd[vpn]
        pm.wr.pop(vpn, None)
    page.pv.clear()
