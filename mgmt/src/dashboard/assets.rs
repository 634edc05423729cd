//! The dashboard's files, compiled in: nothing is downloaded at run time, and the page always matches
//! the API of the binary serving it.

use rocket::http::ContentType;

pub struct File {
    pub name: &'static str,
    pub content_type: ContentType,
    pub body: &'static [u8],
}

pub const INDEX: File =
    File { name: "index.html", content_type: ContentType::HTML, body: include_bytes!("../../dashboard/index.html") };

static FILES: [File; 4] = [
    File { name: "app.js", content_type: ContentType::JavaScript, body: include_bytes!("../../dashboard/app.js") },
    File { name: "mqtt.js", content_type: ContentType::JavaScript, body: include_bytes!("../../dashboard/mqtt.js") },
    File { name: "app.css", content_type: ContentType::CSS, body: include_bytes!("../../dashboard/app.css") },
    File { name: "favicon.svg", content_type: ContentType::SVG, body: include_bytes!("../../dashboard/favicon.svg") },
];

pub fn find(name: &str) -> Option<&'static File> {
    FILES.iter().find(|file| file.name == name)
}
