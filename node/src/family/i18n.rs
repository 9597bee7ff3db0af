//! The family page's texts in English and Spanish.
//!
//! Every text is a field of [`Texts`], so a text missing in one language does not compile.
//! The language comes from the session (the switch on every page), else from the browser's
//! `Accept-Language`, else English.

use time::OffsetDateTime;

/// A language of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Spanish.
    Es,
}

impl Lang {
    /// The BCP 47 tag, for `<html lang>`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Es => "es",
        }
    }

    /// From a form value.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "es" => Some(Lang::Es),
            _ => None,
        }
    }

    /// The best match for an `Accept-Language` header (weights respected).
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let Some(h) = header else { return Lang::En };
        let mut best = (Lang::En, -1.0f32);
        for part in h.split(',') {
            let mut bits = part.trim().split(';');
            let tag = bits.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = bits
                .find_map(|b| b.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let lang = if tag == "es" || tag.starts_with("es-") {
                Some(Lang::Es)
            } else if tag == "en" || tag.starts_with("en-") {
                Some(Lang::En)
            } else {
                None
            };
            if let Some(l) = lang {
                if q > best.1 {
                    best = (l, q);
                }
            }
        }
        best.0
    }

    /// The texts.
    pub fn texts(self) -> &'static Texts {
        match self {
            Lang::En => &EN,
            Lang::Es => &ES,
        }
    }

    /// A date as people write it: `30 June 2027`, `30 de junio de 2027`.
    pub fn date(self, ms: i64) -> String {
        let Ok(t) = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) else {
            return String::new();
        };
        let month = self.texts().months[t.month() as usize - 1];
        match self {
            Lang::En => format!("{} {month} {}", t.day(), t.year()),
            Lang::Es => format!("{} de {month} de {}", t.day(), t.year()),
        }
    }

    /// A date and time (UTC).
    pub fn date_time(self, ms: i64) -> String {
        let Ok(t) = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) else {
            return String::new();
        };
        format!("{}, {:02}:{:02} UTC", self.date(ms), t.hour(), t.minute())
    }

    /// A section's title.
    pub fn section(self, name: &str) -> String {
        let t = self.texts();
        let known = t.sections.iter().find(|(n, _)| *n == name).map(|(_, l)| *l);
        match (known, name.strip_prefix("notes/")) {
            (Some(l), _) => l.to_string(),
            (None, Some(agency)) => format!("{} ({agency})", t.notes_of),
            (None, None) => humanize(name),
        }
    }

    /// A field's label.
    pub fn field(self, name: &str) -> String {
        if self == Lang::Es {
            if let Some((_, l)) = ES_FIELDS.iter().find(|(n, _)| *n == name) {
                return l.to_string();
            }
        }
        humanize(name)
    }

    /// A value from one of the catalogue's closed lists (goal domain, status, …).
    pub fn value(self, v: &str) -> String {
        let table = match self {
            Lang::En => EN_VALUES,
            Lang::Es => ES_VALUES,
        };
        match table.iter().find(|(n, _)| *n == v) {
            Some((_, l)) => l.to_string(),
            None => humanize(v),
        }
    }
}

/// `date_of_birth` → `Date of birth`.
pub fn humanize(name: &str) -> String {
    let s = name.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Every text of the page in one language.
pub struct Texts {
    pub skip: &'static str,
    pub brand: &'static str,
    pub nav_label: &'static str,
    pub nav_plan: &'static str,
    pub nav_sharing: &'static str,
    pub nav_seen: &'static str,
    pub sign_out: &'static str,
    pub switch_to: &'static str,
    pub other_lang_name: &'static str,
    pub other_lang: &'static str,
    pub months: [&'static str; 12],
    pub sections: &'static [(&'static str, &'static str)],
    pub notes_of: &'static str,
    // sign in
    pub signin_title: &'static str,
    pub signin_intro: &'static str,
    pub user_name: &'static str,
    pub user_name_hint: &'static str,
    pub passphrase: &'static str,
    pub passphrase_again: &'static str,
    pub passphrase_hint: &'static str,
    pub signin_button: &'static str,
    pub signin_refused: &'static str,
    pub signin_locked: &'static str,
    pub signin_throttled: &'static str,
    pub signed_out: &'static str,
    // invite
    pub invite_title: &'static str,
    pub invite_intro: &'static str,
    pub invite_valid_until: &'static str,
    pub invite_button: &'static str,
    pub invite_invalid_title: &'static str,
    pub invite_invalid: &'static str,
    pub invite_done: &'static str,
    // plan
    pub plan_title: &'static str,
    pub choose_plan_title: &'static str,
    pub choose_plan: &'static str,
    pub plan_n: &'static str,
    pub open: &'static str,
    pub plan_intro: &'static str,
    pub last_changed: &'static str,
    pub never_changed: &'static str,
    pub empty_section: &'static str,
    pub yes: &'static str,
    pub no: &'static str,
    pub goal_domain: &'static str,
    pub goal_text: &'static str,
    pub goal_horizon: &'static str,
    pub goal_status: &'static str,
    pub goal_target: &'static str,
    pub goal_progress: &'static str,
    pub goal_none: &'static str,
    pub comment: &'static str,
    pub comment_button: &'static str,
    pub add_goal_title: &'static str,
    pub add_goal_button: &'static str,
    pub optional: &'static str,
    pub goal_added: &'static str,
    pub comment_added: &'static str,
    pub withheld: &'static str,
    // sharing
    pub sharing_title: &'static str,
    pub sharing_intro: &'static str,
    pub agency: &'static str,
    pub nobody: &'static str,
    pub access_read: &'static str,
    pub access_read_write: &'static str,
    pub until: &'static str,
    pub consents_title: &'static str,
    pub no_consents: &'static str,
    pub state_active: &'static str,
    pub state_not_yet_valid: &'static str,
    pub state_expired: &'static str,
    pub state_revoked: &'static str,
    pub revoke_button: &'static str,
    pub grant_title: &'static str,
    pub grant_intro: &'static str,
    pub grant_agency: &'static str,
    pub grant_sections: &'static str,
    pub grant_access: &'static str,
    pub grant_purpose: &'static str,
    pub grant_until: &'static str,
    pub grant_until_hint: &'static str,
    pub review_button: &'static str,
    pub review_title: &'static str,
    pub review_intro: &'static str,
    pub confirm_grant: &'static str,
    pub change: &'static str,
    pub granted: &'static str,
    pub revoke_title: &'static str,
    pub revoke_intro: &'static str,
    pub confirm_revoke: &'static str,
    pub keep: &'static str,
    pub revoked: &'static str,
    pub revoked_on: &'static str,
    pub purge_waiting: &'static str,
    pub purge_confirmed: &'static str,
    pub signed_by: &'static str,
    pub recorded_on: &'static str,
    pub purposes: [(&'static str, &'static str); 3],
    // seen
    pub seen_title: &'static str,
    pub seen_intro: &'static str,
    pub when: &'static str,
    pub who: &'static str,
    pub what: &'static str,
    pub basis: &'static str,
    pub no_disclosures: &'static str,
    pub receipts_title: &'static str,
    pub receipts_intro: &'static str,
    pub no_receipts: &'static str,
    pub section: &'static str,
    pub deleted_on: &'static str,
    pub actions: &'static [(&'static str, &'static str)],
    pub basis_home: &'static str,
    pub basis_consent: &'static str,
    // errors
    pub error_title: &'static str,
    pub not_found: &'static str,
    pub forbidden: &'static str,
    pub session_ended: &'static str,
    pub bad_form: &'static str,
    pub server_error: &'static str,
    pub sign_in_again: &'static str,
    pub err_agency: &'static str,
    pub err_sections: &'static str,
    pub err_access: &'static str,
    pub err_purpose: &'static str,
    pub err_until: &'static str,
    pub err_until_past: &'static str,
    pub err_goal_text: &'static str,
    pub err_comment: &'static str,
    pub err_choice: &'static str,
    pub err_name_taken: &'static str,
    pub err_user_name: &'static str,
    pub err_pass_length: &'static str,
    pub err_pass_differ: &'static str,
    pub there_is_a_problem: &'static str,
    /// `{agency} will be able to {access} {sections} until {date} for {purpose}.`
    pub sentence: fn(&str, &str, &str, &str, &str) -> String,
    /// The same for a consent that ended: `{agency} was allowed to …`.
    pub past_sentence: fn(&str, &str, &str, &str, &str) -> String,
    /// `{agency} will no longer see {sections}.`
    pub revoke_sentence: fn(&str, &str) -> String,
    /// A list joined with commas and a final "and".
    pub and: &'static str,
}

const EN: Texts = Texts {
    skip: "Skip to the main content",
    brand: "Family page",
    nav_label: "Main",
    nav_plan: "The plan",
    nav_sharing: "Who can see what",
    nav_seen: "Who has seen what",
    sign_out: "Sign out",
    switch_to: "Switch language",
    other_lang_name: "Español",
    other_lang: "es",
    months: [
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ],
    sections: &[
        ("profile", "About the child"),
        ("strengths", "Strengths and interests"),
        ("goals", "Goals"),
        ("academic", "School work"),
        ("health", "Health"),
        ("behavioral_health", "Behavioral health"),
        ("nutrition", "Nutrition"),
        ("family", "Family"),
        ("services", "Services and referrals"),
    ],
    notes_of: "Case notes",
    signin_title: "Sign in",
    signin_intro: "Sign in to see your child's success plan and decide who may see it.",
    user_name: "Sign-in name",
    user_name_hint: "Lowercase letters, digits, dots, dashes or underscores; for example maria.lopez",
    passphrase: "Passphrase",
    passphrase_again: "Passphrase again",
    passphrase_hint: "At least 12 characters. A few words you will remember work well.",
    signin_button: "Sign in",
    signin_refused: "That sign-in name and passphrase do not match. Check them and try again.",
    signin_locked: "Too many attempts. For your safety, sign-in is paused. Try again after",
    signin_throttled: "Too many attempts from your connection. Please try again in 15 minutes.",
    signed_out: "You have signed out.",
    invite_title: "Set up your access",
    invite_intro: "You have been invited to see your child's success plan. Choose a sign-in name and a passphrase. You will use them every time you sign in.",
    invite_valid_until: "This invitation works until",
    invite_button: "Create my access",
    invite_invalid_title: "This invitation cannot be used",
    invite_invalid: "This invitation link has expired or has been used already. Ask your child's coordinator for a new one.",
    invite_done: "Your access is ready. You are signed in.",
    plan_title: "Your child's plan",
    choose_plan_title: "Choose a plan",
    choose_plan: "You can see more than one plan. Choose one.",
    plan_n: "Plan",
    open: "Open",
    plan_intro: "This is the success plan the agencies keep with you. Each part says who changed it last.",
    last_changed: "Last changed by",
    never_changed: "Nothing written yet.",
    empty_section: "Nothing written yet.",
    yes: "Yes",
    no: "No",
    goal_domain: "Area",
    goal_text: "Goal",
    goal_horizon: "Time frame",
    goal_status: "Status",
    goal_target: "Target date",
    goal_progress: "Progress and comments",
    goal_none: "No goals yet.",
    comment: "Your comment on this goal",
    comment_button: "Add comment",
    add_goal_title: "Add a goal",
    add_goal_button: "Add goal",
    optional: "optional",
    goal_added: "Your goal was added.",
    comment_added: "Your comment was added.",
    withheld: "Not shown to you",
    sharing_title: "Who can see what",
    sharing_intro: "The school keeps your child's plan. Another agency sees a part only if you (or staff on your behalf) agreed, and only until the end date.",
    agency: "Agency",
    nobody: "No",
    access_read: "read",
    access_read_write: "read and change",
    until: "until",
    consents_title: "Your consents",
    no_consents: "There are no consents yet: no other agency sees any part of the plan.",
    state_active: "In force",
    state_not_yet_valid: "Not started yet",
    state_expired: "Ended",
    state_revoked: "Revoked",
    revoke_button: "Revoke",
    grant_title: "Share with an agency",
    grant_intro: "Choose who, which parts, and until when. You will see a summary before anything is shared.",
    grant_agency: "Which agency",
    grant_sections: "Which parts of the plan",
    grant_access: "What they may do",
    grant_purpose: "Why",
    grant_until: "Until (end date)",
    grant_until_hint: "Format: year-month-day, for example 2027-06-30",
    review_button: "Review",
    review_title: "Check before you share",
    review_intro: "Please read this carefully. When you confirm, the node records your consent with your electronic signature.",
    confirm_grant: "Confirm and share",
    change: "Go back and change",
    granted: "Your consent was recorded.",
    revoke_title: "Revoke this consent?",
    revoke_intro: "The agency will stop receiving these parts and must delete its copies. You will see its confirmation on this page.",
    confirm_revoke: "Yes, revoke",
    keep: "No, keep it",
    revoked: "The consent was revoked. The agency has been told to delete its copies.",
    revoked_on: "Revoked on",
    purge_waiting: "Waiting for the agency to confirm it deleted its copies.",
    purge_confirmed: "Deletion confirmed",
    signed_by: "Recorded by",
    recorded_on: "on",
    purposes: [
        ("care_coordination", "care coordination"),
        ("referral", "a referral"),
        ("evaluation", "an evaluation"),
    ],
    seen_title: "Who has seen what",
    seen_intro: "Every time someone read or changed your child's plan, or a part of it was sent to another agency, it is recorded here, newest first.",
    when: "When",
    who: "Who",
    what: "What",
    basis: "Allowed by",
    no_disclosures: "Nothing recorded yet.",
    receipts_title: "Deletion receipts",
    receipts_intro: "When a consent ends, the other agency deletes its copies and sends a signed receipt.",
    no_receipts: "No deletion receipts yet.",
    section: "Part of the plan",
    deleted_on: "Deleted on",
    actions: &[
        ("read", "read"),
        ("history", "read the history"),
        ("watch", "followed changes"),
        ("write", "changed"),
        ("create_plan", "created the plan"),
        ("disclose", "received a copy"),
        ("replica_write", "changed (at their agency)"),
        ("purge_receipt", "confirmed deletion"),
    ],
    basis_home: "the home agency",
    basis_consent: "consent",
    error_title: "Something went wrong",
    not_found: "This page does not exist, or it is not yours to see.",
    forbidden: "You may not do this.",
    session_ended: "Your session has ended or the form was too old. Please try again.",
    bad_form: "The form was not complete. Please try again.",
    server_error: "The page could not be shown. Please try again later.",
    sign_in_again: "Sign in",
    err_agency: "Choose an agency from the list.",
    err_sections: "Choose at least one part of the plan.",
    err_access: "Choose what the agency may do.",
    err_purpose: "Choose why you are sharing.",
    err_until: "Give an end date as year-month-day, for example 2027-06-30.",
    err_until_past: "The end date must be after today.",
    err_goal_text: "Write the goal (at most 1000 characters).",
    err_comment: "Write a comment (at most 4000 characters).",
    err_choice: "Choose one of the options.",
    err_name_taken: "That sign-in name is taken. Choose another.",
    err_user_name: "The sign-in name may have only lowercase letters, digits, dots, dashes and underscores, and must start with a letter or digit.",
    err_pass_length: "The passphrase must be 12 to 256 characters long.",
    err_pass_differ: "The two passphrases are not the same.",
    there_is_a_problem: "There is a problem",
    sentence: |agency, access, sections, date, purpose| {
        format!("{agency} will be able to {access} {sections} until {date} for {purpose}.")
    },
    past_sentence: |agency, access, sections, date, purpose| {
        format!("{agency} was allowed to {access} {sections} until {date} for {purpose}.")
    },
    revoke_sentence: |agency, sections| format!("{agency} will no longer see {sections}."),
    and: "and",
};

const ES: Texts = Texts {
    skip: "Saltar al contenido principal",
    brand: "Página para familias",
    nav_label: "Principal",
    nav_plan: "El plan",
    nav_sharing: "Quién puede ver qué",
    nav_seen: "Quién ha visto qué",
    sign_out: "Cerrar sesión",
    switch_to: "Cambiar idioma",
    other_lang_name: "English",
    other_lang: "en",
    months: [
        "enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
        "octubre", "noviembre", "diciembre",
    ],
    sections: &[
        ("profile", "Sobre el niño o la niña"),
        ("strengths", "Fortalezas e intereses"),
        ("goals", "Metas"),
        ("academic", "Trabajo escolar"),
        ("health", "Salud"),
        ("behavioral_health", "Salud emocional y conductual"),
        ("nutrition", "Alimentación"),
        ("family", "Familia"),
        ("services", "Servicios y derivaciones"),
    ],
    notes_of: "Notas del caso",
    signin_title: "Iniciar sesión",
    signin_intro: "Inicie sesión para ver el plan de éxito de su hijo o hija y decidir quién puede verlo.",
    user_name: "Nombre de acceso",
    user_name_hint: "Letras minúsculas, números, puntos, guiones o guiones bajos; por ejemplo maria.lopez",
    passphrase: "Frase de contraseña",
    passphrase_again: "Repita la frase de contraseña",
    passphrase_hint: "Al menos 12 caracteres. Unas palabras que pueda recordar funcionan bien.",
    signin_button: "Iniciar sesión",
    signin_refused: "El nombre de acceso y la frase de contraseña no coinciden. Revíselos e inténtelo de nuevo.",
    signin_locked: "Demasiados intentos. Por su seguridad, el acceso está en pausa. Inténtelo de nuevo después de",
    signin_throttled: "Demasiados intentos desde su conexión. Inténtelo de nuevo en 15 minutos.",
    signed_out: "Ha cerrado la sesión.",
    invite_title: "Configure su acceso",
    invite_intro: "Le han invitado a ver el plan de éxito de su hijo o hija. Elija un nombre de acceso y una frase de contraseña. Los usará cada vez que inicie sesión.",
    invite_valid_until: "Esta invitación funciona hasta el",
    invite_button: "Crear mi acceso",
    invite_invalid_title: "Esta invitación no se puede usar",
    invite_invalid: "Este enlace de invitación ha caducado o ya se usó. Pida uno nuevo a la persona coordinadora.",
    invite_done: "Su acceso está listo. Ha iniciado sesión.",
    plan_title: "El plan de su hijo o hija",
    choose_plan_title: "Elija un plan",
    choose_plan: "Puede ver más de un plan. Elija uno.",
    plan_n: "Plan",
    open: "Abrir",
    plan_intro: "Este es el plan de éxito que las agencias llevan con usted. Cada parte indica quién la cambió por última vez.",
    last_changed: "Último cambio por",
    never_changed: "Todavía no hay nada escrito.",
    empty_section: "Todavía no hay nada escrito.",
    yes: "Sí",
    no: "No",
    goal_domain: "Área",
    goal_text: "Meta",
    goal_horizon: "Plazo",
    goal_status: "Estado",
    goal_target: "Fecha objetivo",
    goal_progress: "Avances y comentarios",
    goal_none: "Todavía no hay metas.",
    comment: "Su comentario sobre esta meta",
    comment_button: "Añadir comentario",
    add_goal_title: "Añadir una meta",
    add_goal_button: "Añadir meta",
    optional: "opcional",
    goal_added: "Se añadió su meta.",
    comment_added: "Se añadió su comentario.",
    withheld: "No se le muestra",
    sharing_title: "Quién puede ver qué",
    sharing_intro: "La escuela guarda el plan. Otra agencia ve una parte solo si usted (o el personal en su nombre) lo autorizó, y solo hasta la fecha de fin.",
    agency: "Agencia",
    nobody: "No",
    access_read: "leer",
    access_read_write: "leer y cambiar",
    until: "hasta el",
    consents_title: "Sus consentimientos",
    no_consents: "Todavía no hay consentimientos: ninguna otra agencia ve parte alguna del plan.",
    state_active: "Vigente",
    state_not_yet_valid: "Aún no empieza",
    state_expired: "Terminado",
    state_revoked: "Revocado",
    revoke_button: "Revocar",
    grant_title: "Compartir con una agencia",
    grant_intro: "Elija quién, qué partes y hasta cuándo. Verá un resumen antes de compartir nada.",
    grant_agency: "Qué agencia",
    grant_sections: "Qué partes del plan",
    grant_access: "Qué puede hacer",
    grant_purpose: "Para qué",
    grant_until: "Hasta (fecha de fin)",
    grant_until_hint: "Formato: año-mes-día, por ejemplo 2027-06-30",
    review_button: "Revisar",
    review_title: "Revise antes de compartir",
    review_intro: "Léalo con atención. Al confirmar, el sistema registra su consentimiento con su firma electrónica.",
    confirm_grant: "Confirmar y compartir",
    change: "Volver y cambiar",
    granted: "Se registró su consentimiento.",
    revoke_title: "¿Revocar este consentimiento?",
    revoke_intro: "La agencia dejará de recibir estas partes y debe borrar sus copias. Verá su confirmación en esta página.",
    confirm_revoke: "Sí, revocar",
    keep: "No, mantenerlo",
    revoked: "Se revocó el consentimiento. Se pidió a la agencia que borre sus copias.",
    revoked_on: "Revocado el",
    purge_waiting: "Esperando que la agencia confirme que borró sus copias.",
    purge_confirmed: "Borrado confirmado",
    signed_by: "Registrado por",
    recorded_on: "el",
    purposes: [
        ("care_coordination", "coordinar la atención"),
        ("referral", "una derivación"),
        ("evaluation", "una evaluación"),
    ],
    seen_title: "Quién ha visto qué",
    seen_intro: "Cada vez que alguien leyó o cambió el plan, o se envió una parte a otra agencia, queda registrado aquí, lo más reciente primero.",
    when: "Cuándo",
    who: "Quién",
    what: "Qué",
    basis: "Permitido por",
    no_disclosures: "Todavía no hay registros.",
    receipts_title: "Comprobantes de borrado",
    receipts_intro: "Cuando termina un consentimiento, la otra agencia borra sus copias y envía un comprobante firmado.",
    no_receipts: "Todavía no hay comprobantes de borrado.",
    section: "Parte del plan",
    deleted_on: "Borrado el",
    actions: &[
        ("read", "leyó"),
        ("history", "leyó el historial"),
        ("watch", "siguió los cambios"),
        ("write", "cambió"),
        ("create_plan", "creó el plan"),
        ("disclose", "recibió una copia"),
        ("replica_write", "cambió (en su agencia)"),
        ("purge_receipt", "confirmó el borrado"),
    ],
    basis_home: "la agencia del plan",
    basis_consent: "consentimiento",
    error_title: "Algo salió mal",
    not_found: "Esta página no existe o no le corresponde verla.",
    forbidden: "No puede hacer esto.",
    session_ended: "Su sesión terminó o el formulario era muy antiguo. Inténtelo de nuevo.",
    bad_form: "El formulario no estaba completo. Inténtelo de nuevo.",
    server_error: "No se pudo mostrar la página. Inténtelo más tarde.",
    sign_in_again: "Iniciar sesión",
    err_agency: "Elija una agencia de la lista.",
    err_sections: "Elija al menos una parte del plan.",
    err_access: "Elija qué puede hacer la agencia.",
    err_purpose: "Elija para qué comparte.",
    err_until: "Indique la fecha de fin como año-mes-día, por ejemplo 2027-06-30.",
    err_until_past: "La fecha de fin debe ser posterior a hoy.",
    err_goal_text: "Escriba la meta (como máximo 1000 caracteres).",
    err_comment: "Escriba un comentario (como máximo 4000 caracteres).",
    err_choice: "Elija una de las opciones.",
    err_name_taken: "Ese nombre de acceso ya está en uso. Elija otro.",
    err_user_name: "El nombre de acceso solo puede tener letras minúsculas, números, puntos, guiones y guiones bajos, y empezar por una letra o un número.",
    err_pass_length: "La frase de contraseña debe tener entre 12 y 256 caracteres.",
    err_pass_differ: "Las dos frases de contraseña no coinciden.",
    there_is_a_problem: "Hay un problema",
    sentence: |agency, access, sections, date, purpose| {
        format!("{agency} podrá {access} {sections} hasta el {date} para {purpose}.")
    },
    past_sentence: |agency, access, sections, date, purpose| {
        format!("{agency} tenía permiso para {access} {sections} hasta el {date} para {purpose}.")
    },
    revoke_sentence: |agency, sections| format!("{agency} dejará de ver {sections}."),
    and: "y",
};

const ES_FIELDS: &[(&str, &str)] = &[
    ("given_name", "Nombre"),
    ("family_name", "Apellido"),
    ("preferred_name", "Nombre preferido"),
    ("date_of_birth", "Fecha de nacimiento"),
    ("grade", "Grado"),
    ("school", "Escuela"),
    ("home_language", "Idioma en casa"),
    ("guardians", "Tutores"),
    ("tier", "Nivel de necesidad"),
    ("strengths", "Fortalezas"),
    ("interests", "Intereses"),
    ("notes", "Notas"),
    ("reading_level", "Nivel de lectura"),
    ("math_level", "Nivel de matemáticas"),
    ("supports", "Apoyos"),
    ("conditions", "Condiciones"),
    ("allergies", "Alergias"),
    ("medications", "Medicamentos"),
    ("primary_care_provider", "Médico de cabecera"),
    ("insurance", "Seguro"),
    ("concerns", "Preocupaciones"),
    ("screenings", "Evaluaciones"),
    ("counselor", "Consejero"),
    ("crisis_plan", "Plan de crisis"),
    ("food_security", "Seguridad alimentaria"),
    ("meal_program", "Programa de comidas"),
    ("dietary_needs", "Necesidades alimentarias"),
    ("service", "Servicio"),
    ("provider_agency", "Agencia proveedora"),
    ("status", "Estado"),
];

const EN_VALUES: &[(&str, &str)] = &[
    ("social_emotional", "Social and emotional"),
    ("short", "Short term"),
    ("long", "Long term"),
    ("in_progress", "In progress"),
];

const ES_VALUES: &[(&str, &str)] = &[
    ("academic", "académica"),
    ("social_emotional", "socioemocional"),
    ("health", "salud"),
    ("family", "familia"),
    ("other", "otra"),
    ("short", "corto plazo"),
    ("long", "largo plazo"),
    ("open", "abierta"),
    ("in_progress", "en curso"),
    ("met", "lograda"),
    ("dropped", "abandonada"),
    ("proposed", "propuesta"),
    ("sent", "enviada"),
    ("accepted", "aceptada"),
    ("completed", "completada"),
    ("declined", "rechazada"),
];

/// Joins `a`, `b` and `c` as "a, b and c".
pub fn join_and(items: &[String], and: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} {and} {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_browser_language_is_respected_with_weights() {
        assert_eq!(Lang::from_accept_language(None), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("es-MX,es;q=0.9")), Lang::Es);
        assert_eq!(
            Lang::from_accept_language(Some("en;q=0.5, es;q=0.8")),
            Lang::Es
        );
        assert_eq!(Lang::from_accept_language(Some("fr, en;q=0.3")), Lang::En);
        assert_eq!(Lang::from_accept_language(Some("de")), Lang::En);
    }

    #[test]
    fn dates_read_naturally() {
        let ms = 1_814_313_600_000; // 2027-06-30
        assert_eq!(Lang::En.date(ms), "30 June 2027");
        assert_eq!(Lang::Es.date(ms), "30 de junio de 2027");
        assert_eq!(
            join_and(&["a".into(), "b".into(), "c".into()], "and"),
            "a, b and c"
        );
    }
}
