"""Languages: English (the source strings) and Russian, the platform's language (the seeds).

Every visible string goes through Qt's ``tr``; this translator answers from a table instead of a
compiled ``.qm`` file, so a translation is reviewed as text next to the code and needs no build
step. The language follows the system unless the player chose one (Settings, or ``--lang``).
"""

from __future__ import annotations

from PySide6.QtCore import QLocale, QObject, QSettings, QTranslator

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
    "Language (applies on restart):": "Язык (после перезапуска):",
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
}
TABLES = {"ru": RU}


class TableTranslator(QTranslator):
    def __init__(self, table: dict[str, str], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.table = table

    def translate(self, context: str, source: str, disambiguation: str | None = None,
                  n: int = -1) -> str:
        return self.table.get(source, "")

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
