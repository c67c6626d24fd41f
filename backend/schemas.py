"""Request and response bodies (JSON:API envelopes of the seeds) as pydantic models.

They make the OpenAPI document accurate and validate input; the download service's attributes
are camelCase and the library service's snake_case, as in the seeds.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

T = TypeVar("T")

ProductId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                 examples=["starfall"])]
VersionId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                 examples=["1.0.0"])]
DeviceId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                examples=["7f3c2a9e-desktop"])]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
TaskStatus = Literal["queued", "preparing", "downloading", "paused", "verifying", "completed",
                     "error", "cancelled"]
# "queued"/"preparing": an engine says a task waits in its queue again (it stopped the run for
# its own reasons, or the player resumed it there) — "paused" is kept for a player's pause
ReportedStatus = Literal["queued", "preparing", "downloading", "paused", "completed", "error",
                         "cancelled", "verifying"]


class Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Data(Model, Generic[T]):
    data: T


class Links(Model):
    self: str | None = None
    first: str | None = None
    prev: str | None = None
    next: str | None = None
    last: str | None = None


class SelfLink(Model):
    self: str


class PageMeta(Model):
    total_items: int
    current_page: int
    per_page: int
    total_pages: int


class Page(Model, Generic[T]):
    data: list[T]
    meta: PageMeta
    links: Links


class ErrorSource(Model):
    pointer: str | None = None
    parameter: str | None = None


class ErrorObject(Model):
    status: str
    code: str
    title: str
    detail: str
    source: ErrorSource | None = None


class ErrorBody(Model):
    errors: list[ErrorObject]


# -- auth --------------------------------------------------------------------------------------


class TokenRequest(Model):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class RefreshRequest(Model):
    refreshToken: str = Field(min_length=1, max_length=256)


class RevokeRequest(Model):
    refreshToken: str | None = Field(default=None, min_length=1, max_length=256)


class AuthTokenAttributes(Model):
    accessToken: str
    refreshToken: str
    tokenType: Literal["Bearer"] = "Bearer"
    expiresIn: int


class AuthTokenResource(Model):
    type: Literal["authToken"] = "authToken"
    attributes: AuthTokenAttributes


class ManifestKeyAttributes(Model):
    algorithm: Literal["ed25519"] = "ed25519"
    publicKey: str


class ManifestKeyResource(Model):
    type: Literal["manifestKey"] = "manifestKey"
    attributes: ManifestKeyAttributes


# -- library -----------------------------------------------------------------------------------


class LibraryVersion(Model):
    version_id: str
    created_at: str
    total_size_bytes: int
    file_count: int


class LibraryItemAttributes(Model):
    product_id: str
    title: str
    cover_image_url: str | None = None
    added_at: datetime
    acquisition_type: str
    shared_from_user_id: str | None = Field(
        default=None, description="family_shared_access: the owner who lends the game")
    last_played_at: datetime | None
    total_playtime_seconds: int
    installation_status: str
    installed_version_id: str | None = None
    is_hidden: bool
    user_rating: int | None
    latest_version_id: str | None
    versions: list[LibraryVersion]
    install_size_bytes: int
    download_size_bytes: int
    category_ids: list[str] = Field(description="the user's categories holding this item")


class ResourceRef(Model):
    type: str
    id: str


class ToMany(Model):
    data: list[ResourceRef]


class LibraryItemRelationships(Model):
    categories: ToMany


class LibraryItemResource(Model):
    type: Literal["libraryItem"] = "libraryItem"
    id: str
    attributes: LibraryItemAttributes
    relationships: LibraryItemRelationships
    links: SelfLink


MAX_CATEGORY_NAME = 64
MAX_ITEM_CATEGORIES = 100
SORT_ORDER_MAX = 1_000_000
# ids are UUIDs; the pattern keeps control characters (NUL: PostgreSQL refuses it) out of queries
CATEGORY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
CategoryId = Annotated[str, Field(min_length=1, max_length=64, pattern=CATEGORY_ID_PATTERN)]
SortOrder = Annotated[int, Field(ge=0, le=SORT_ORDER_MAX)]


def category_name(value: str) -> str:
    """A category name as stored: NFC, surrounding whitespace trimmed, 1..64 characters, no
    control characters (C0/C1, DEL), lone surrogates or line/paragraph separators."""
    value = unicodedata.normalize("NFC", value).strip()
    if not value:
        raise ValueError("must not be empty or only whitespace")
    if len(value) > MAX_CATEGORY_NAME:
        raise ValueError(f"longer than {MAX_CATEGORY_NAME} characters (after trimming)")
    for ch in value:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            raise ValueError(f"contains the control character U+{ord(ch):04X}")
    return value


_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# raw input may carry surrounding whitespace; the trimmed name is checked by category_name
CategoryName = Annotated[str, Field(
    min_length=1, max_length=4 * MAX_CATEGORY_NAME, examples=["Favourites"],
    description=f"trimmed, 1..{MAX_CATEGORY_NAME} characters, no control characters; unique per "
                "user regardless of case")]


class LibraryItemPatchAttributes(Model):
    is_hidden: bool | None = None
    installation_status: Literal["not_installed", "installed", "repair_needed", "error"] | None \
        = Field(default=None, description="what the client's disk holds now (e.g. not_installed "
                "after an uninstall); the newer of this and the newest download task wins")
    user_rating: int | None = Field(default=None, ge=1, le=5)
    category_ids: list[CategoryId] | None = Field(
        default=None, max_length=MAX_ITEM_CATEGORIES,
        description="the item's categories (replaces them; [] removes all; null or absent "
                    "leaves them); each must be one of the user's own categories")


class LibraryItemPatch(Model):
    type: Literal["libraryItemUpdate"] = "libraryItemUpdate"
    id: str | None = None
    attributes: LibraryItemPatchAttributes


# -- user categories ---------------------------------------------------------------------------


class CategoryAttributes(Model):
    name: str
    sort_order: int
    item_count: int
    created_at: datetime
    updated_at: datetime


class CategoryResource(Model):
    type: Literal["userCategory"] = "userCategory"
    id: str
    attributes: CategoryAttributes
    links: SelfLink


class CategoryCreateAttributes(Model):
    name: CategoryName
    sort_order: SortOrder | None = Field(default=None, description="default: after the last")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return category_name(value)


class CategoryCreate(Model):
    type: Literal["userCategoryCreate"] = "userCategoryCreate"
    attributes: CategoryCreateAttributes


class CategoryPatchAttributes(Model):
    name: CategoryName | None = None
    sort_order: SortOrder | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else category_name(value)


class CategoryPatch(Model):
    type: Literal["userCategoryUpdate"] = "userCategoryUpdate"
    id: str | None = None
    attributes: CategoryPatchAttributes


# -- downloads ---------------------------------------------------------------------------------


class DownloadTaskRequestAttributes(Model):
    productId: ProductId
    versionId: VersionId | None = None
    targetPath: str = Field(min_length=1, max_length=4096)
    priority: int = Field(default=0, ge=0, le=10)
    deviceId: DeviceId | None = Field(default=None, description=(
        "the engine creating the task for itself runs it (ours); without it the task is a "
        "remote download that one of the user's running engines claims"))
    targetDeviceId: DeviceId | None = Field(default=None, description=(
        "a remote download for this device only (ours; default: any of the user's engines)"))


class DownloadTaskRequest(Model):
    type: Literal["downloadTaskRequest"] = "downloadTaskRequest"
    attributes: DownloadTaskRequestAttributes


class FileRef(Model):
    path: str
    signaturePath: str


class CdnSource(Model):
    id: str
    baseUrl: str
    query: str
    expiresAt: datetime
    priority: int
    mode: Literal["hmac", "nginx"]


class DownloadTaskAttributes(Model):
    productId: str
    versionId: str
    fromVersionId: str | None
    kind: Literal["install", "update"]
    status: TaskStatus
    targetPath: str
    priority: int
    queuePosition: int | None
    totalSizeBytes: int
    downloadSizeBytes: int
    downloadedBytes: int
    createdAt: datetime
    updatedAt: datetime
    errorCode: str | None
    errorMessage: str | None
    manifest: FileRef
    delta: FileRef | None = None
    cdnSources: list[CdnSource] | None = None
    origin: Literal["device", "remote"] | None = None
    deviceId: str | None = None
    targetDeviceId: str | None = None


class DownloadTaskResource(Model):
    type: Literal["downloadTask"] = "downloadTask"
    id: str
    attributes: DownloadTaskAttributes
    links: SelfLink


class ItemReport(Model):
    """One file's progress or retry since the engine's last report (ours: live per-file
    progress for the device watching a remote download)."""

    relativePath: str = Field(min_length=1, max_length=4096)
    status: Literal["downloading", "completed", "retrying"]
    downloadedBytes: int = Field(default=0, ge=0, le=1 << 60)
    totalFileSizeBytes: int | None = Field(default=None, ge=0, le=1 << 60)
    retryCount: int = Field(default=0, ge=0, le=1_000_000)
    cdnSourceId: str | None = Field(default=None, max_length=64)
    errorCode: str | None = Field(default=None, max_length=64)
    errorMessage: str | None = Field(default=None, max_length=4000)


class StatusReportAttributes(Model):
    status: ReportedStatus
    deviceId: DeviceId | None = Field(default=None, description=(
        "ours: the reporting engine's device id. A task run by a device (claimed, or created "
        "with its deviceId) takes reports only from that device: another one is 409 "
        "DOWNLOAD_TASK_CLAIMED_ELSEWHERE; a claimed remote download needs it"))
    downloadedBytes: int | None = Field(default=None, ge=0, le=1 << 60)
    errorCode: str | None = Field(default=None, max_length=64)
    errorMessage: str | None = Field(default=None, max_length=4000)
    items: list[ItemReport] | None = Field(default=None, max_length=500, description=(
        "ours: files that moved since the last report; each is sent on the progress channel "
        "as a downloadItemProgressUpdate (not stored)"))


class StatusReport(Model):
    type: Literal["downloadTaskStatus"] = "downloadTaskStatus"
    attributes: StatusReportAttributes


class StatusHistoryAttributes(Model):
    status: str
    downloadedBytes: int
    errorCode: str | None
    errorMessage: str | None
    createdAt: datetime


class StatusHistoryResource(Model):
    type: Literal["downloadTaskStatus"] = "downloadTaskStatus"
    id: str
    attributes: StatusHistoryAttributes


class ClaimAttributes(Model):
    deviceId: DeviceId


class ClaimRequest(Model):
    type: Literal["downloadTaskClaim"] = "downloadTaskClaim"
    attributes: ClaimAttributes


class ReorderEntry(Model):
    taskId: str = Field(max_length=64)
    order: int = Field(ge=0, le=100_000)


class InstalledProductAttributes(Model):
    productId: ProductId
    currentVersionId: VersionId


class InstalledProduct(Model):
    type: Literal["installedProduct"] = "installedProduct"
    attributes: InstalledProductAttributes


class UpdateCheckRequest(Model):
    data: list[InstalledProduct] = Field(min_length=1, max_length=200)


class UpdateInfoAttributes(Model):
    productId: str
    currentVersionId: str
    isUpdateAvailable: bool
    latestVersionId: str
    updateType: Literal["delta", "full"] | None = None
    downloadSizeBytes: int | None = None
    deltaDownloadSizeBytes: int | None = None
    fullDownloadSizeBytes: int | None = None
    requiredDiskSpaceBytes: int | None = None
    hasDeltaIndex: bool | None = None
    deltaIndexError: str | None = Field(default=None, description=(
        "ours: the store's delta index of this step is damaged; the update is offered from "
        "chunks alone"))


class UpdateInfoResource(Model):
    type: Literal["updateInfo"] = "updateInfo"
    attributes: UpdateInfoAttributes


class UpdateInitiateAttributes(Model):
    productId: ProductId
    targetVersionId: VersionId | None = None
    currentVersionId: VersionId | None = None
    targetPath: str | None = Field(default=None, min_length=1, max_length=4096)
    priority: int = Field(default=1, ge=0, le=10)
    deviceId: DeviceId | None = None
    targetDeviceId: DeviceId | None = None


class UpdateInitiateRequest(Model):
    type: Literal["updateInitiateRequest"] = "updateInitiateRequest"
    attributes: UpdateInitiateAttributes


class UpdateAppliedAttributes(Model):
    productId: ProductId
    versionId: VersionId
    fromVersionId: VersionId | None = None
    status: Literal["success", "verification_failed", "patch_failed", "failed"]
    updateType: Literal["delta", "full"] | None = None
    taskId: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, max_length=4000)


class UpdateAppliedRequest(Model):
    type: Literal["updateApplied"] = "updateApplied"
    attributes: UpdateAppliedAttributes


class UpdateHistoryAttributes(Model):
    productId: str
    fromVersionId: str | None
    versionId: str
    status: str
    updateType: str | None
    taskId: str | None
    detail: str | None
    createdAt: datetime


class UpdateHistoryResource(Model):
    type: Literal["updateHistory"] = "updateHistory"
    id: str
    attributes: UpdateHistoryAttributes


class IntegrityRequestAttributes(Model):
    productId: ProductId
    installedVersionId: VersionId


class IntegrityRequest(Model):
    type: Literal["integrityVerificationRequest"] = "integrityVerificationRequest"
    attributes: IntegrityRequestAttributes


class VerificationAttributes(Model):
    productId: str
    versionId: str
    status: Literal["pending", "in_progress", "completed", "failed"]
    fileCount: int
    totalSizeBytes: int
    manifest: FileRef
    createdAt: datetime


class VerificationResource(Model):
    type: Literal["verificationTask"] = "verificationTask"
    id: str
    attributes: VerificationAttributes


# -- playtime ----------------------------------------------------------------------------------


ClientKey = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]


class SessionStartAttributes(Model):
    product_id: ProductId
    client_session_id: ClientKey | None = Field(
        default=None, description="the client's own id for this session: a repeated start with "
        "the same id (or Idempotency-Key header) returns the same session")
    start_time: datetime | None = Field(
        default=None, description="when the session really started (offline replay); default "
        "now; not in the future, not older than playtime_max_backdate")


class SessionStart(Model):
    type: Literal["playtimeSessionStart"] = "playtimeSessionStart"
    attributes: SessionStartAttributes


class HeartbeatAttributes(Model):
    at: datetime | None = Field(default=None, description="when the client saw the game running "
                                "(offline replay); default now; clamped to [last heartbeat, now]")


class Heartbeat(Model):
    type: Literal["playtimeHeartbeat"] = "playtimeHeartbeat"
    attributes: HeartbeatAttributes


class SessionEndAttributes(Model):
    ended_at: datetime | None = Field(
        default=None, description="when the session ended by the client's clock (e.g. its last "
        "heartbeat after a crash); not before the start, not in the future")
    duration_seconds: int | None = Field(
        default=None, ge=0, le=10 * 365 * 86_400,
        description="the session's length measured by the client (clock-skew proof); wins over "
        "ended_at; capped at playtime_max_session")


class SessionEnd(Model):
    type: Literal["playtimeSessionEnd"] = "playtimeSessionEnd"
    attributes: SessionEndAttributes


class SessionAttributes(Model):
    product_id: str
    client_session_id: str | None
    start_time: datetime
    last_heartbeat_at: datetime
    end_time: datetime | None
    duration_seconds: int | None
    status: Literal["active", "completed"]
    end_reason: Literal["client", "timeout", "superseded"] | None


class SessionResource(Model):
    type: Literal["playtimeSession"] = "playtimeSession"
    id: str
    attributes: SessionAttributes


class PlaytimeSummaryAttributes(Model):
    product_id: str
    total_playtime_seconds: int
    last_played_at: datetime | None
    session_count: int
    active_session_id: str | None


class PlaytimeSummaryResource(Model):
    type: Literal["playtimeSummary"] = "playtimeSummary"
    id: str
    attributes: PlaytimeSummaryAttributes


# -- saves -------------------------------------------------------------------------------------

SlotName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f/\\]+$")]
SaveSize = Annotated[int, Field(ge=0, le=1 << 40)]


def _one_of(ours: Any, seeds: Any, names: str) -> Any:
    """The value of a field that has two accepted names (ours and the seed's): either may be
    given, both only with the same value."""
    if ours is not None and seeds is not None and ours != seeds:
        raise ValueError(f"{names} disagree; give one of them")
    return ours if ours is not None else seeds


class UploadUrlAttributes(Model):
    """Our names (``slot``, ``size_bytes``, ``sha256``) and the seed's (``save_slot_name``,
    ``file_size_bytes``, ``file_hash_sha256``) are both accepted."""

    product_id: ProductId
    slot: SlotName | None = None
    save_slot_name: SlotName | None = Field(default=None, description="the seed's name of slot")
    size_bytes: SaveSize | None = None
    file_size_bytes: SaveSize | None = Field(default=None,
                                             description="the seed's name of size_bytes")
    sha256: Sha256 | None = None
    file_hash_sha256: Sha256 | None = Field(default=None, description="the seed's name of sha256")
    base_version: int | None = Field(
        default=None, ge=0, le=1 << 31,
        description="the slot version this upload is based on (the last one the client synced): "
        "N = the slot's latest version must still be N; 0 or null = the slot must not exist yet; "
        "absent = no check (the seed's request: last writer wins)")
    client_timestamp: datetime | None = None
    comment: str | None = Field(default=None, max_length=1000)

    @model_validator(mode="after")
    def _names(self) -> UploadUrlAttributes:
        self.slot = _one_of(self.slot, self.save_slot_name, "slot and save_slot_name")
        self.size_bytes = _one_of(self.size_bytes, self.file_size_bytes,
                                  "size_bytes and file_size_bytes")
        self.sha256 = _one_of(self.sha256, self.file_hash_sha256, "sha256 and file_hash_sha256")
        missing = [n for n, v in (("slot (or save_slot_name)", self.slot),
                                  ("size_bytes (or file_size_bytes)", self.size_bytes),
                                  ("sha256 (or file_hash_sha256)", self.sha256)) if v is None]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return self

    def base(self) -> int | None:
        """The base version as stored: None = no check, 0 = new slot, N."""
        if "base_version" not in self.model_fields_set:
            return None
        return self.base_version or 0


class UploadUrlRequest(Model):
    type: Literal["savegameUploadRequest"] = "savegameUploadRequest"
    attributes: UploadUrlAttributes


class PresignedUploadAttributes(Model):
    upload_url: str
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_in_seconds: int
    expires_at: datetime
    internal_save_id: str
    s3_path: str = Field(description="where the object will live (echo it in confirm-upload)")
    product_id: str
    slot: str
    base_version: int | None
    latest_version: int | None = Field(description="the slot's latest version now (null: none)")


class PresignedUploadResource(Model):
    type: Literal["presignedUploadUrl"] = "presignedUploadUrl"
    id: str
    attributes: PresignedUploadAttributes


class UploadReceiptAttributes(Model):
    internal_save_id: str
    size_bytes: int
    sha256: str


class UploadReceiptResource(Model):
    type: Literal["savegameUploadReceipt"] = "savegameUploadReceipt"
    id: str
    attributes: UploadReceiptAttributes


class ConfirmAttributes(Model):
    internal_save_id: str = Field(min_length=1, max_length=64)
    s3_path: str | None = Field(default=None, max_length=1024,
                                description="optional; if given it must be the upload's s3_path")


class ConfirmRequest(Model):
    type: Literal["savegameUploadConfirmation"] = "savegameUploadConfirmation"
    attributes: ConfirmAttributes


class SavegameAttributes(Model):
    product_id: str
    slot: str
    version: int
    size_bytes: int
    sha256: str
    client_timestamp: datetime | None
    server_timestamp: datetime
    created_at: datetime
    comment: str | None
    download_url: str
    download_url_expires_at: datetime
    # the seed's SavegameMetadata names of the same values
    slot_name: str
    s3_path: str
    file_size_bytes: int
    file_hash_sha256: str


class SavegameResource(Model):
    type: Literal["savegame"] = "savegame"
    id: str
    attributes: SavegameAttributes


class SavegameSlotAttributes(Model):
    product_id: str
    slot: str
    latest_version: int
    latest_savegame_id: str
    latest_sha256: str
    latest_size_bytes: int
    latest_created_at: datetime
    version_count: int
    versions: list[SavegameResource]


class SavegameSlotResource(Model):
    type: Literal["savegameSlot"] = "savegameSlot"
    id: str
    attributes: SavegameSlotAttributes


class RestoreAttributes(Model):
    base_version: int | None = Field(
        default=None, ge=0, le=1 << 31,
        description="as for upload-url: the slot's latest version must still be this one")


class RestoreRequest(Model):
    type: Literal["savegameRestore"] = "savegameRestore"
    attributes: RestoreAttributes


# -- achievements ------------------------------------------------------------------------------

AchievementId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class AchievementProgress(Model):
    current: int
    total: int


class AchievementStatusAttributes(Model):
    product_id: str
    name: str
    description: str
    icon_url: str | None
    icon_url_unlocked: str | None
    icon_url_locked: str | None
    is_hidden: bool
    is_unlocked: bool
    unlocked_at: datetime | None
    current_progress: AchievementProgress | None
    rarity_percentage: float = Field(description="share of the product's owners who unlocked it")


class AchievementStatusResource(Model):
    type: Literal["userAchievementStatus"] = "userAchievementStatus"
    id: str
    attributes: AchievementStatusAttributes


class AchievementStatusMeta(Model):
    total: int
    unlocked: int
    owners: int


class AchievementStatusList(Model):
    data: list[AchievementStatusResource]
    meta: AchievementStatusMeta


class UnlockAttributes(Model):
    unlocked_at: datetime | None = Field(
        default=None, description="when the game unlocked it (offline replay); default now; not "
        "in the future")
    client_unlock_id: ClientKey | None = Field(
        default=None, description="idempotency key (or the Idempotency-Key header): the same "
        "key again returns the first answer instead of ACHIEVEMENT_ALREADY_UNLOCKED")


class UnlockRequest(Model):
    type: Literal["achievementUnlock"] = "achievementUnlock"
    attributes: UnlockAttributes


class ProgressAttributes(Model):
    current: int = Field(ge=0, le=1 << 31, description="the progress reached (never lowers it)")
    at: datetime | None = None


class ProgressRequest(Model):
    type: Literal["achievementProgress"] = "achievementProgress"
    attributes: ProgressAttributes


class UserAchievementAttributes(Model):
    product_id: str
    achievement_id: str
    name: str
    is_unlocked: bool
    unlocked_at: datetime | None
    current_progress: AchievementProgress | None
    newly_unlocked: bool = Field(description="this request unlocked it (false on a replay)")


class UserAchievementResource(Model):
    type: Literal["userAchievement"] = "userAchievement"
    id: str
    attributes: UserAchievementAttributes


# -- installation state ------------------------------------------------------------------------

ReportedInstall = Literal["not_installed", "installed", "repair_needed", "error"]


class InstallationEventAttributes(Model):
    """The seed's ``download.game.installed/uninstalled`` event, sent by the client."""

    product_id: ProductId
    event_type: Literal["installed", "uninstalled", "repair_needed", "error"]
    version_id: VersionId | None = None
    timestamp: datetime | None = Field(
        default=None, description="when it happened on the device (default now); an event older "
        "than the item's current state is recorded as stale and changes nothing")


class InstallationEvent(Model):
    type: Literal["installationEvent"] = "installationEvent"
    attributes: InstallationEventAttributes


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each listed status documented with the error body."""
    return {s: {"model": ErrorBody, "description": _REASONS.get(s, "Error")} for s in statuses}


_REASONS = {
    400: "Bad request", 401: "Missing, invalid or expired access token",
    403: "Not entitled / not allowed", 404: "Not found", 409: "Conflict",
    413: "Payload too large", 416: "Range not satisfiable", 422: "Validation failed",
    429: "Rate limited (Retry-After)", 500: "Internal error",
}
