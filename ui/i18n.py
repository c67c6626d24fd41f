"""Languages: English (the source strings) and Russian, the platform's language (the seeds).

Every visible string goes through Qt's ``tr``; this translator answers from a table instead of a
compiled ``.qm`` file, so a translation is reviewed as text next to the code and needs no build
step. The language follows the system unless the player chose one (Settings, or ``--lang``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QLocale, QObject, QSettings, QTranslator

LANGUAGES = {"en": "English", "ru": "Русский"}

RU = {
    " MB/s": " МБ/с",
    "All games": "Все игры",
    "All {0} files are intact.": "Все файлы ({0}) в порядке.",
    "Cancel": "Отмена",
    "Cancelled": "Отменено",
    "Connected to the engine · {0}": "Подключено к движку · {0}",
    "Connecting to the engine…": "Подключение к движку…",
    "Disk {0}/s": "Диск {0}/с",
    "Done": "Готово",
    "Download now": "Скачать сейчас",
    "Download only during:": "Скачивать только в:",
    "Download queue": "Очередь загрузок",
    "Download speed graph": "График скорости загрузки",
    "Downloading {0:.0f}%": "Загрузка {0:.0f}%",
    "Downloading": "Загрузка",
    "Downloads at the same time:": "Одновременных загрузок:",
    "Downloads": "Загрузки",
    "Engine data folder:": "Папка данных движка:",
    "Engine unavailable: {0}": "Движок недоступен: {0}",
    "Failed": "Ошибка",
    "Game Launcher": "Игровой лаунчер",
    "Game": "Игра",
    "Grid view": "Плитка",
    "Install": "Установить",
    "Installed": "Установлена",
    "Installed: {0}, {1} in {2}": "Установлена: {0}, {1} в {2}",
    "Latest version: {0}": "Последняя версия: {0}",
    "Library": "Библиотека",
    "List view": "Список",
    "Log in": "Вход",
    "Logging in…": "Вход…",
    "Move up": "Выше",
    "Needs repair": "Требует восстановления",
    "Network {0}/s": "Сеть {0}/с",
    "Network {0}/s, disk {1}/s": "Сеть {0}/с, диск {1}/с",
    "No game selected": "Игра не выбрана",
    "No limit": "Без ограничения",
    "Not installed": "Не установлена",
    "Pages": "Разделы",
    "Password": "Пароль",
    "Password:": "Пароль:",
    "Pause": "Пауза",
    "Paused": "На паузе",
    "Preparing": "Подготовка",
    "Progress": "Прогресс",
    "Queued": "В очереди",
    "Resume": "Продолжить",
    "Save": "Сохранить",
    "Search the library": "Поиск в библиотеке",
    "Search": "Поиск",
    "Server:": "Сервер:",
    "Set limit": "Ограничить",
    "Settings": "Настройки",
    "Show": "Показать",
    "Size on disk: {0}": "Размер на диске: {0}",
    "Size": "Размер",
    "Something went wrong": "Что-то пошло не так",
    "Speed limit": "Ограничение скорости",
    "Speed limit:": "Ограничение скорости:",
    "Speed": "Скорость",
    "Status": "Состояние",
    "Time left": "Осталось",
    "Uninstall": "Удалить",
    "Update available": "Доступно обновление",
    "Update": "Обновить",
    "Updates available": "Есть обновления",
    "User name": "Имя пользователя",
    "User name:": "Имя пользователя:",
    "Verify files": "Проверить файлы",
    "Verifying": "Проверка",
    "e.g. 22:00-06:00; sat,sun 00:00-24:00": "напр. 22:00-06:00; sat,sun 00:00-24:00",
    "Quit": "Выйти",
    "Set schedule": "Задать расписание",
    "Hidden": "Скрытые",
    "Category": "Категория",
    "All categories": "Все категории",
    "Categories…": "Категории…",
    "Categories": "Категории",
    "Categories of {0}": "Категории игры {0}",
    "New category": "Новая категория",
    "Add": "Добавить",
    "Hide": "Скрыть",
    "Unhide": "Показать",
    "Update to {0}: download {1} (a full download is {2}); the rest is reused from the installed "
    "files.": "Обновление до {0}: скачать {1} (полная загрузка — {2}); остальное берётся из "
              "установленных файлов.",
    "Show finished": "Завершённые",
    "For the selected game": "Для выбранной игры",
    "Install {0}": "Установка {0}",
    "Install folder": "Папка установки",
    "Install folder:": "Папка установки:",
    "Browse…": "Обзор…",
    "Needs {0} on disk; {1} free there.": "Нужно {0} на диске; свободно {1}.",
    "Not enough space.": "Недостаточно места.",
    "Sort by": "Сортировка",
    "Name": "Название",
    "Last played": "Недавно запущенные",
    "Playtime": "Время в игре",
    "Date added": "Дата добавления",
    "Offline: the store cannot be reached; showing installed games":
        "Офлайн: магазин недоступен; показаны установленные игры",
    "Ready to play": "Можно играть",
    "Download failed": "Загрузка не удалась",
    "Downloading {0}: {1:.0f}%": "Загрузка {0}: {1:.0f}%",
    "The engine refused: {0}": "Движок отказал: {0}",
    "{0} file(s) are damaged or missing. Repair them now?":
        "Повреждено или отсутствует файлов: {0}. Восстановить сейчас?",
    "There is not enough free disk space.": "Недостаточно свободного места на диске.",
    "The download servers cannot be reached. Check the connection and retry.":
        "Серверы загрузки недоступны. Проверьте подключение и повторите.",
    "Downloaded data was damaged on every server. Retry later.":
        "Загруженные данные повреждены на всех серверах. Повторите позже.",
    "The chosen folder already holds files. Choose an empty or new folder.":
        "В выбранной папке уже есть файлы. Выберите пустую или новую папку.",
    "Please log in.": "Войдите в аккаунт.",
    "Your session has expired; please log in again.": "Сеанс истёк, войдите снова.",
    "Wrong user name or password.": "Неверное имя пользователя или пароль.",
    "This account does not own the game.": "У этого аккаунта нет этой игры.",
    "The download engine is not running; reconnecting.":
        "Движок загрузок не запущен; переподключение.",
    "Update {0} {1} → {2}: download {3} (a full install is {4}), reuse {5} already on disk, "
    "write {6}.": "Обновление {0} {1} → {2}: скачать {3} (полная установка — {4}), "
                  "использовать {5} с диска, записать {6}.",
    "Retry": "Повторить",
    "Files…": "Файлы…",
    "Pause all": "Приостановить все",
    "Resume all": "Продолжить все",
    "Files": "Файлы",
    "File": "Файл",
    "No file has finished yet.": "Ни один файл ещё не готов.",
    "Files of {0}": "Файлы: {0}",
    "{0} files reported so far.": "Готово файлов: {0}.",
    "Favourites": "Избранное",
    "Saved views": "Сохранённые виды",
    "Save view…": "Сохранить вид…",
    "Save view": "Сохранить вид",
    "Name of this view (filters, category, search, sort):":
        "Название вида (фильтры, категория, поиск, сортировка):",
    "Play": "Играть",
    "Roll back": "Откатить",
    "Move…": "Переместить…",
    "Favourite": "В избранное",
    "★ Favourite": "★ В избранном",
    "☆ Favourite": "☆ В избранное",
    "Move the game to": "Переместить игру в",
    "Running": "Запущена",
    "Never played": "Ещё не запускалась",
    "Uninstall {0}? Only the game's own files are removed; your saves and any files you added "
    "stay.": "Удалить {0}? Удаляются только файлы игры; сохранения и ваши файлы останутся.",
    "Not in: {0}": "Кроме: {0}",
    "Played {0}; last {1}": "В игре {0}; последний запуск {1}",
    "never": "никогда",
    "Pause them": "Приостанавливать",
    "Slow them down to": "Замедлять до",
    "Carry on": "Продолжать",
    "Keep games up to date automatically": "Обновлять игры автоматически",
    "Speed while playing": "Скорость во время игры",
    "Start with the system (in the tray)": "Запускать вместе с системой (в трее)",
    "Install games in:": "Устанавливать игры в:",
    "Install games in": "Устанавливать игры в",
    "Download server:": "Сервер загрузки:",
    "Download server": "Сервер загрузки",
    "Updates:": "Обновления:",
    "Updates": "Обновления",
    "Downloads while a game runs:": "Загрузки во время игры:",
    "Downloads while a game runs": "Загрузки во время игры",
    "System:": "Система:",
    "System": "Система",
    "Language:": "Язык:",
    "Language": "Язык",
    "Downloads at the same time": "Одновременных загрузок",
    "Download only during": "Скачивать только в",
    "Engine data folder": "Папка данных движка",
    "Automatic (fastest)": "Автоматически (самый быстрый)",
    "Saved.": "Сохранено.",
    "That setting was refused: {0}": "Настройка отклонена: {0}",
    "The game is running; close it first.": "Игра запущена; сначала закройте её.",
    "Something else is already at that place: {0}": "Это место уже занято: {0}",
    "Pause all downloads": "Приостановить все загрузки",
    "Achievements": "Достижения",
    "Cloud saves": "Облачные сохранения",
    "Sync now": "Синхронизировать",
    "Keep this device's": "Оставить с этого устройства",
    "Keep the cloud's": "Оставить из облака",
    "Restore this version": "Восстановить эту версию",
    "Save conflict": "Конфликт сохранений",
    "Achievement": "Достижение",
    "Players": "Игроков",
    "✓ Unlocked": "✓ Получено",
    "State": "Состояние",
    "Version": "Версия",
    "Saved": "Сохранено",
    "Restore": "Восстановить",
    "Achievements of {0}": "Достижения: {0}",
    "{0} of {1} unlocked": "Получено {0} из {1}",
    "Locked": "Не получено",
    "Cloud saves of {0}": "Облачные сохранения: {0}",
    "only on this device": "только на этом устройстве",
    "The saves of {0} changed on this device and in the cloud since they were last synced. "
    "Which do you want to play with? The other copy stays recoverable.":
        "Сохранения {0} изменились и на этом устройстве, и в облаке после последней "
        "синхронизации. С какими играть? Другая копия останется доступной.",
    "{0} save file(s) changed on this device and in the cloud since the last sync. Choose "
    "which to keep; the other copy stays recoverable.":
        "Файлов сохранений, изменённых и здесь, и в облаке: {0}. Выберите, что оставить; "
        "другая копия останется доступной.",
    "{0} save file(s); local backups: {1}.": "Файлов сохранений: {0}; локальных копий: {1}.",
    "Replace the save on this device with version {0}? The current one is backed up first "
    "and stays in the cloud's history.":
        "Заменить сохранение на этом устройстве версией {0}? Текущее сначала копируется и "
        "остаётся в истории облака.",
    "{0} of {1}": "{0} из {1}",
    "Achievements…": "Достижения…",
    "Cloud saves…": "Облачные сохранения…",
    "The game is being installed or updated; it can start when that is done.":
        "Игра устанавливается или обновляется; её можно будет запустить после этого.",
    "Some of the game's files are damaged. Verify and repair it first.":
        "Часть файлов игры повреждена. Сначала проверьте и восстановите её.",
    "This game does not say how to start it. Contact its publisher.":
        "Игра не указывает, как её запускать. Обратитесь к издателю.",
    "The game could not be started: {0}": "Не удалось запустить игру: {0}",
    "Achievement unlocked": "Получено достижение",
    "The game closed with an error": "Игра завершилась с ошибкой",
    "{0}: exit code {1}": "{0}: код завершения {1}",
    "In sync": "Синхронизировано",
    "Not available yet": "Пока недоступна",
    "< 1 min": "< 1 мин",
    "B": "Б",
    "kB": "кБ",
    "MB": "МБ",
    "GB": "ГБ",
    "TB": "ТБ",
    "On this device: {0}": "На этом устройстве: {0}",
    "{0} min": "{0} мин",
    "{0} h {1:02d} min": "{0} ч {1:02d} мин",
    "Being published; it can be installed in a moment.":
        "Игра публикуется; установить её можно будет через минуту.",
    "Newer here": "Новее здесь",
    "Newer in the cloud": "Новее в облаке",
    "Changed on both": "Изменено в обоих местах",
    # the About box and the launcher's update channel (ui/about.py)
    "About Game Launcher": "О программе «Игровой лаунчер»",
    "About…": "О программе…",
    "Beta (early builds)": "Бета (ранние сборки)",
    "Installed in {0}; update channel: {1}.": "Установлен в {0}; канал обновлений: {1}.",
    "Launcher update channel": "Канал обновлений лаунчера",
    "Launcher": "Лаунчер",
    "Launcher:": "Лаунчер:",
    "Running from source: it updates with git, not by itself.":
        "Запущен из исходного кода: обновляется через git, а не сам.",
    "Stable": "Стабильный",
    "Version {0} is ready and starts next time.": "Версия {0} готова и запустится в следующий раз.",
    "Version {0}": "Версия {0}",
    # wishlist and family sharing
    "Wishlist": "Список желаемого",
    "Family sharing": "Семейный доступ",
    "Family": "Семья",
    "Wished": "Желаемое",
    "a family member": "член семьи",
    "On your wishlist": "В списке желаемого",
    "{0} is playing it now": "{0} сейчас играет в неё",
    "Shared by {0}": "Владелец: {0}",
    "Borrow": "Взять поиграть",
    "Add this game of your family to your library, to install and play it while its owner is "
    "not playing it":
        "Добавить эту игру семьи в свою библиотеку, чтобы устанавливать её и играть, пока "
        "владелец в неё не играет",
    "Wishlist priority:": "Приоритет в списке желаемого:",
    "Wishlist priority": "Приоритет в списке желаемого",
    "Higher comes first on the wishlist": "Чем выше, тем раньше в списке желаемого",
    "Family: shared by {0}": "Семья: владелец {0}",
    "Family: {0} shares it; borrow it to install and play it.":
        "Семья: {0} делится этой игрой; возьмите её, чтобы установить и играть.",
    "{0} is playing it now; it can be played when they stop.":
        "{0} сейчас играет в неё; играть можно, когда он закончит.",
    "Remove from wishlist": "Убрать из списка желаемого",
    "Add to wishlist": "В список желаемого",
    "On your wishlist since {0}": "В списке желаемого с {0}",
    "Not in your library.": "Нет в вашей библиотеке.",
    "The family member who shares this game is playing it now, or no longer shares it. It can "
    "be played when they stop.":
        "Член семьи, который делится этой игрой, сейчас в неё играет или больше ею не "
        "делится. Играть можно, когда он закончит.",
    "That game is no longer on your wishlist.": "Этой игры уже нет в списке желаемого.",
    "Your wishlist is full. Remove a game from it to add another.":
        "Список желаемого заполнен. Уберите из него игру, чтобы добавить другую.",
    "{0} is playing {1} now. A game shared by the family can be played while its owner is not "
    "playing it; try again when they stop.":
        "{0} сейчас играет в «{1}». В игру из семейного доступа можно играть, пока владелец в "
        "неё не играет; попробуйте, когда он закончит.",
    "The family member who shares it": "Член семьи, который делится ею,",
    "{0} (from another device)": "{0} (с другого устройства)",
}
TABLES = {"ru": RU}


class TableTranslator(QTranslator):
    def __init__(self, table: dict[str, str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.table = table

    def translate(self, context: str, source: str, disambiguation: str | None = None,
                  n: int = -1) -> str | None:
        # None (a null string) says "no translation here": Qt then keeps its own text. An empty
        # string would be taken as the translation, and Qt translates internal strings too
        # (with "" for them, PNG loading failed: every cover stayed a placeholder in Russian)
        return self.table.get(source)

    def isEmpty(self) -> bool:
        return False


def chosen_language(explicit: str | None = None) -> str:
    if explicit in LANGUAGES:
        return str(explicit)
    saved = QSettings().value("language")
    if isinstance(saved, str) and saved in LANGUAGES:
        return saved
    return "ru" if QLocale.system().language() == QLocale.Language.Russian else "en"


def translator_for(language: str) -> QTranslator | None:
    table = TABLES.get(language)
    return TableTranslator(table) if table else None


_installed: list[QTranslator] = []  # the translator in use (kept alive here)
_current = ["en"]


def current_language() -> str:
    """The language the application shows now (``use_language``'s last choice)."""
    return _current[0]


def use_language(language: str) -> None:
    """Show the application in ``language`` from now on: Qt sends every window a
    LanguageChange event, and each shows its strings again (``Texts.apply``)."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("use_language needs a QApplication")
    for old in _installed:
        app.removeTranslator(old)
    _installed.clear()
    _current[0] = language if language in LANGUAGES else "en"
    translator = translator_for(language)
    if translator is not None:
        app.installTranslator(translator)
        _installed.append(translator)


def tr(source: str) -> str:
    """``source`` in the current language (the context is unused: one table per language)."""
    return QCoreApplication.translate("launcher", source)


class Texts:
    """The fixed strings of a page with the setters that show them, so a language switch can
    show every one of them again without rebuilding the page (and losing what it holds)."""

    def __init__(self) -> None:
        self.entries: list[tuple[Callable[[str], Any], str]] = []

    def __call__(self, setter: Callable[[str], Any], source: str) -> str:
        self.entries.append((setter, source))
        text = tr(source)
        setter(text)
        return text

    def apply(self) -> None:
        for setter, source in self.entries:
            setter(tr(source))
