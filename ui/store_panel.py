"""The selected game's wishlist and family-sharing part of the library page: who shares it
(and whether they play it now), Borrow, the wishlist priority, add to / remove from the
wishlist. Thin: it shows what the library model knows and forwards each action to the engine
(``borrow``, ``wishlistAdd``, ``wishlistPriority``, ``wishlistRemove``); the answers come back
as a reload of the library or of the store data."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ui.i18n import Texts, tr
from ui.link import EngineLink
from ui.models import LibraryModel, local_time

MAX_PRIORITY = 1000  # the backend's range: 0..1000, higher first


class StorePanel(QWidget):
    libraryChanged = Signal()  # a game was borrowed: the library reloads
    storeChanged = Signal()  # the wishlist changed: the wishlist reloads

    def __init__(self, link: EngineLink, model: LibraryModel,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        self.product: str | None = None
        t = self.texts = Texts()
        self.family = QLabel()
        self.family.setWordWrap(True)
        self.family.setObjectName("familyLine")
        self.borrow = QPushButton()
        t(self.borrow.setText, "Borrow")
        t(self.borrow.setToolTip, "Add this game of your family to your library, to install "
          "and play it while its owner is not playing it")
        self.borrow.setStyleSheet("QPushButton { font-size: 13pt; font-weight: 600; "
                                  "padding: 8px; }")
        self.borrow.clicked.connect(self.borrow_game)
        self.wish = QPushButton()
        self.wish.clicked.connect(self.toggle_wish)
        self.priority_label = QLabel()
        t(self.priority_label.setText, "Wishlist priority:")
        self.priority = QSpinBox()
        self.priority.setRange(0, MAX_PRIORITY)
        t(self.priority.setAccessibleName, "Wishlist priority")
        t(self.priority.setToolTip, "Higher comes first on the wishlist")
        self.priority_label.setBuddy(self.priority)
        self.priority.editingFinished.connect(self.set_priority)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.priority_label)
        row.addWidget(self.priority, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.family)
        layout.addWidget(self.borrow)
        layout.addLayout(row)
        layout.addWidget(self.wish)
        self.show_item(None)

    def retranslate(self) -> None:
        self.texts.apply()
        self.show_item(self.product)

    def show_item(self, product: str | None) -> None:
        """Show what applies to ``product``: nothing for a bought game that is not wished."""
        chosen = product != self.product
        self.product = product
        item = self.model.item_of(product) if product else None
        owner = self.model.owner_of(item) if item else None
        if chosen and owner is not None:
            # whether the owner plays it changes without a word from the backend: asked again
            # when the player picks the game (an unchanged answer repaints nothing)
            self.link.request("family", {}, self.model.set_family)
        wish = self.model.wish_of(item) if item else None
        store = item is not None and self.model.is_store(item)
        borrowed = item is not None and self.model.is_borrowed(item)
        lines = []
        if owner is not None:
            lines.append(tr("Family: shared by {0}").format(owner) if borrowed or not store
                         else tr("Family: {0} shares it; borrow it to install and play it.")
                         .format(owner))
            if item is not None and self.model.owner_playing(item):
                lines.append(tr("{0} is playing it now; it can be played when they stop.")
                             .format(owner))
        self.family.setText("\n".join(lines))
        self.family.setVisible(bool(lines))
        self.borrow.setVisible(store and owner is not None)
        self.borrow.setEnabled(store and owner is not None)
        self.priority_label.setVisible(wish is not None)
        self.priority.setVisible(wish is not None)
        if wish is not None and not self.priority.hasFocus():
            self.priority.setValue(int(wish.get("priority") or 0))
        # wishing is for games the player does not own: the family's and the store's
        wishable = wish is not None or store or borrowed
        self.wish.setVisible(wishable)
        self.wish.setText(tr("Remove from wishlist") if wish is not None
                          else tr("Add to wishlist"))
        # (not self.wish.isVisible(): that is False while this panel itself is hidden)
        self.setVisible(bool(lines) or wishable)

    # -- actions ------------------------------------------------------------------------------
    def borrow_game(self) -> None:
        if self.product:
            self.borrow.setEnabled(False)  # once; the reload shows the borrowed game
            self.link.request("borrow", {"productId": self.product},
                              lambda _item: self.libraryChanged.emit())

    def toggle_wish(self) -> None:
        if not self.product:
            return
        item = self.model.item_of(self.product)
        method = "wishlistRemove" if item and self.model.wish_of(item) else "wishlistAdd"
        self.link.request(method, {"productId": self.product},
                          lambda _r: self.storeChanged.emit())

    def set_priority(self) -> None:
        item = self.model.item_of(self.product) if self.product else None
        wish = self.model.wish_of(item) if item else None
        if wish is None or int(wish.get("priority") or 0) == self.priority.value():
            return
        self.link.request("wishlistPriority", {"productId": self.product,
                                               "priority": self.priority.value()},
                          lambda _r: self.storeChanged.emit())

    def primary(self) -> bool:
        """Enter on a game of the family not borrowed yet borrows it."""
        if self.borrow.isVisible() and self.borrow.isEnabled():
            self.borrow_game()
            return True
        return False


def describe(model: LibraryModel, item: dict[str, Any]) -> list[str]:
    """The detail lines of a store row (a wished or family game not in the library)."""
    lines = []
    wish = model.wish_of(item)
    if wish is not None:
        lines.append(tr("On your wishlist since {0}").format(local_time(wish.get("addedAt"))))
    if model.owner_of(item) is None and wish is not None:
        lines.append(tr("Not in your library."))
    return lines
