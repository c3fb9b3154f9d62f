"""The streams layer: every stream a client syncs on, declared once (`declarations`), live
as `Stream` objects in one `StreamRegistry` (`registry`), and one `StreamBus` (`bus`) on
which writers say "stream S advanced to P for these rooms/users" after they commit."""
